"""HIL bench for INT8 ECG models on ESP32 boards: a pytest plugin and the parts it is built from."""

__version__ = "0.1.0"
