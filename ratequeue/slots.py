"""Number → slot: CRC16 (XMODEM, as Redis Cluster uses) of the canonical number mod 16384."""

from __future__ import annotations

SLOT_COUNT = 16384


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def slot_for(number: str) -> int:
    """Slot of a canonical number (normalize first: the slot depends on the exact string)."""
    return crc16(number.encode()) % SLOT_COUNT
