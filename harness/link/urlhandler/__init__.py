"""pyserial URL handlers of the harness (pyserial's `protocol_handler_packages` extension point)."""
