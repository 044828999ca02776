"""`rfc2217://` as pyserial's client, minus a renegotiation of the line settings on every timeout change.

pyserial's RFC 2217 client sends baud, data size, parity, stop bits and flow control to the server and
polls for the answers in 50 ms sleeps whenever any setting changes, the read timeout included, although
the timeout never leaves the host. esptool sets a timeout around every command, so each bootloader
command cost 100-200 ms over the network (a 9 KB flash took 20 s on 127.0.0.1). This client negotiates
only when a setting the server uses has changed; everything else is pyserial's.
"""

from __future__ import annotations

from serial import rfc2217


class Serial(rfc2217.Serial):
    _negotiated = None

    def _line_settings(self):
        return (self._baudrate, self._bytesize, self._parity, self._stopbits, self._rtscts, self._xonxoff)

    def _reconfigure_port(self):
        if self._write_timeout is not None:
            raise NotImplementedError("write_timeout is currently not supported")  # as pyserial's; esptool relies on it
        settings = self._line_settings()
        if settings == self._negotiated:
            return
        super()._reconfigure_port()
        self._negotiated = settings

    def close(self):
        self._negotiated = None
        super().close()
