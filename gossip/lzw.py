"""LZW in the dialect of Go's `compress/lzw` with LSB bit order and 8-bit literals (memberlist's compression).

Codes start 9 bits wide and grow to 12; 256 is the clear code, 257 the end-of-data code, and the first
table entry is 258. Like Go's writer, `compress` starts with a clear code, and emits another (resetting
the table) when the table fills up, so Go's reader and ours agree on every stream either one writes.
A stream must end with the end-of-data code; bytes after it are ignored, as Go does.
"""

from __future__ import annotations

_LIT_WIDTH = 8
_CLEAR = 1 << _LIT_WIDTH  # 256
_EOF = _CLEAR + 1  # 257
_MAX_WIDTH = 12
_MAX_CODE = (1 << _MAX_WIDTH) - 1  # 4095

# Room for any packet or push-pull memberlist accepts (maxPushStateBytes is 20 MiB).
DEFAULT_MAX_OUTPUT = 20 * 1024 * 1024


class _BitWriter:
    """Packs variable-width codes least-significant bit first."""

    __slots__ = ("bits", "nbits", "out")

    def __init__(self) -> None:
        self.bits = 0
        self.nbits = 0
        self.out = bytearray()

    def write(self, code: int, width: int) -> None:
        self.bits |= code << self.nbits
        self.nbits += width
        while self.nbits >= 8:
            self.out.append(self.bits & 0xFF)
            self.bits >>= 8
            self.nbits -= 8

    def finish(self) -> bytes:
        if self.nbits > 0:
            self.out.append(self.bits & 0xFF)
        return bytes(self.out)


def compress(data: bytes) -> bytes:
    """Compress `data` exactly as Go's `lzw.NewWriter(w, lzw.LSB, 8)` followed by `Close` would."""
    writer = _BitWriter()
    width = _LIT_WIDTH + 1
    writer.write(_CLEAR, width)
    if not data:
        writer.write(_EOF, width)
        return writer.finish()
    # Mirrors the encoder's notion of the highest assigned code: a new code is assigned after each emit.
    hi = _EOF
    overflow = 1 << width
    table: dict[int, int] = {}
    get = table.get
    # The bit writer, inlined in the loop (the gossip core compresses full packets during join storms).
    out = writer.out
    bits, nbits = writer.bits, writer.nbits
    code = data[0]
    for byte in data[1:]:
        key = (code << 8) | byte
        found = get(key)
        if found is not None:
            code = found
            continue
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
        code = byte
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == _MAX_CODE:
            # Out of codes: tell the reader to reset, then start a fresh table.
            bits |= _CLEAR << nbits
            nbits += width
            while nbits >= 8:
                out.append(bits & 0xFF)
                bits >>= 8
                nbits -= 8
            width, hi, overflow = _LIT_WIDTH + 1, _EOF, 1 << (_LIT_WIDTH + 1)
            table.clear()
            continue
        table[key] = hi
    writer.bits, writer.nbits = bits, nbits
    writer.write(code, width)
    hi += 1
    if hi == overflow:
        width += 1
    if hi == _MAX_CODE:
        writer.write(_CLEAR, width)
        width = _LIT_WIDTH + 1
    writer.write(_EOF, width)
    return writer.finish()


def decompress(data: bytes, max_output: int = DEFAULT_MAX_OUTPUT) -> bytes:
    """Decompress a Go LSB/8 LZW stream; ValueError on a bad code, a missing end code, or output over `max_output`."""
    out = bytearray()
    # entries[c] is what code c expands to; literals are pre-filled, the rest appear as the stream goes.
    entries: list[bytes | None] = [bytes([i]) for i in range(_CLEAR)] + [None] * ((1 << _MAX_WIDTH) - _CLEAR)
    width = _LIT_WIDTH + 1
    mask = (1 << width) - 1
    hi = _EOF
    overflow = 1 << width
    last: bytes | None = None
    bits = 0
    nbits = 0
    pos = 0
    size = len(data)
    while True:
        while nbits < width:
            if pos >= size:
                raise ValueError("lzw: stream ends without an end-of-data code")
            bits |= data[pos] << nbits
            pos += 1
            nbits += 8
        code = bits & mask
        bits >>= width
        nbits -= width
        if code == _CLEAR:
            width, hi, overflow, last = _LIT_WIDTH + 1, _EOF, 1 << (_LIT_WIDTH + 1), None
            mask = (1 << width) - 1
            for i in range(_EOF + 1, len(entries)):
                entries[i] = None
            continue
        if code == _EOF:
            return bytes(out)
        entry = entries[code]
        if entry is None:
            if code != hi or last is None:
                raise ValueError(f"lzw: invalid code {code}")
            # The code being defined right now: the previous string plus its own first byte.
            entry = last + last[:1]
        if len(out) + len(entry) > max_output:
            raise ValueError(f"lzw: output exceeds {max_output} bytes")
        out += entry
        if last is not None:
            entries[hi] = last + entry[:1]
        last = entry
        hi += 1
        if hi >= overflow:
            if width == _MAX_WIDTH:
                # Table full and no clear code yet: stop adding entries until the writer resets us.
                last = None
                hi -= 1
            else:
                width += 1
                mask = (1 << width) - 1
                overflow <<= 1
