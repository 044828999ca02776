"""What an ESP32's boot ROM puts on the benchmark UART when the chip restarts, as the host receives it.

The ROM prints its banner at 74880 baud while the host listens at the bench's baud (921600), so the host's
UART samples the text's waveform at the wrong rate and delivers bytes that are neither the text nor silence:
mostly 0x00 with framing errors during long low stretches, and bit-shifted fragments elsewhere. The link
relay's `garbage` fault and the virtual board's `reset-every` switch both emit exactly these bytes, so the
harness is tested against what a resetting board really sends instead of against tidy ASCII.
"""

from __future__ import annotations

from functools import lru_cache

ROM_BAUD = 74880

# An ESP32 ROM banner after a software reset (the text does not depend on the app).
ROM_TEXT = (
    b"ets Jun  8 2016 00:22:57\r\n\r\n"
    b"rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
    b"configsip: 0, SPIWP:0xee\r\n"
    b"clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00\r\n"
    b"mode:DIO, clock div:2\r\n"
    b"load:0x3fff0030,len:7104\r\n"
    b"load:0x40078000,len:15576\r\n"
    b"load:0x40080400,len:4\r\n"
    b"load:0x40080404,len:3876\r\n"
    b"entry 0x4008064c\r\n"
)


@lru_cache(maxsize=8)
def as_received(text: bytes = ROM_TEXT, sent_baud: int = ROM_BAUD, rx_baud: int = 921600) -> bytes:
    """The bytes a UART at `rx_baud` (8N1) delivers for `text` sent at `sent_baud` (8N1).

    The receiver is modelled like a 16550: it starts a character on a low line, samples each data bit in
    its middle (1.5, 2.5, ... bit times after the start) and the stop bit at 9.5; after a framing error
    (stop bit low) a line that is still low counts as the next start bit, which is why a long low stretch
    arrives as a run of 0x00 bytes.
    """
    if sent_baud == rx_baud:
        return bytes(text)
    bits = []
    for ch in text:
        bits.append(0)
        bits.extend((ch >> i) & 1 for i in range(8))
        bits.append(1)
    t_sent = 1.0 / sent_baud
    t_rx = 1.0 / rx_baud
    end = len(bits) * t_sent

    def level(t: float) -> int:
        i = int(t / t_sent)
        return bits[i] if 0 <= i < len(bits) else 1

    def next_low(t: float) -> float | None:
        i = int(t / t_sent)
        if i < len(bits) and bits[i] == 0:
            return t
        for j in range(i + 1, len(bits)):
            if bits[j] == 0:
                return j * t_sent
        return None

    out = bytearray()
    t = 0.0
    while t < end:
        start = next_low(t)
        if start is None:
            break
        value = 0
        for k in range(8):
            value |= level(start + (1.5 + k) * t_rx) << k
        out.append(value)
        t = start + 9.5 * t_rx
    return bytes(out)
