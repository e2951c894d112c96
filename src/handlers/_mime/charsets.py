"""Charset labels read the way mail clients read them, and the one decoding rule the
parser uses for headers, encoded words, parameters and bodies. Never raises.

The rule: the declared charset, as mail clients interpret its label (the WHATWG
Encoding Standard's aliases plus the labels mailers are known to misuse); if the bytes
are not valid in it, UTF-8; if they are not UTF-8 either, the declared charset again with
U+FFFD for the bytes it cannot read. Without a usable declared charset (none, an unknown
label, or US-ASCII, which says nothing about 8-bit bytes): UTF-8, else Windows-1252 as
browsers define it, which reads every byte.
"""

from __future__ import annotations

import codecs
import encodings
import pkgutil
import re
from encodings.aliases import aliases as _CODEC_ALIASES
from functools import lru_cache

__all__ = ["codec_for", "decode_text", "decode_undeclared"]

# Labels whose Python codec differs from what mail clients use: the wider set that
# mailers really meant (as browsers do), or names Python does not know.
_CLIENT_LABELS = {
    "iso_8859_1": "cp1252",
    "iso8859_1": "cp1252",
    "latin_1": "cp1252",
    "latin1": "cp1252",
    "l1": "cp1252",
    "iso_ir_100": "cp1252",
    "cp819": "cp1252",
    "ibm819": "cp1252",
    "x_cp1252": "cp1252",
    "iso_8859_9": "cp1254",
    "iso8859_9": "cp1254",
    "latin5": "cp1254",
    "iso_8859_11": "cp874",
    "tis_620": "cp874",
    "windows_874": "cp874",
    "iso_8859_8_i": "iso8859_8",
    "iso_8859_8_e": "iso8859_8",
    "csiso88598i": "iso8859_8",
    "logical": "iso8859_8",
    "visual": "iso8859_8",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x_gbk": "gb18030",
    "gb_2312_80": "gb18030",
    "chinese": "gb18030",
    "csgb2312": "gb18030",
    "big5": "big5hkscs",
    "x_x_big5": "big5hkscs",
    "ks_c_5601_1987": "cp949",
    "ks_c_5601_1989": "cp949",
    "ksc5601": "cp949",
    "euc_kr": "cp949",
    "korean": "cp949",
    "shift_jis": "cp932",
    "sjis": "cp932",
    "x_sjis": "cp932",
    "ms_kanji": "cp932",
    "windows_31j": "cp932",
    "csshiftjis": "cp932",
    "x_mac_roman": "mac_roman",
    "macintosh": "mac_roman",
    "mac": "mac_roman",
    "csmacintosh": "mac_roman",
    "x_mac_cyrillic": "mac_cyrillic",
    "x_mac_ukrainian": "mac_cyrillic",
    "x_mac_greek": "mac_greek",
    "x_mac_turkish": "mac_turkish",
    "x_mac_icelandic": "mac_iceland",
    "x_mac_ce": "mac_latin2",
    "x_mac_centraleurroman": "mac_latin2",
    "x_mac_croatian": "mac_croatian",
    "x_mac_romanian": "mac_romanian",
    "x_unicode20utf8": "utf_8",
    "unicode_1_1_utf_8": "utf_8",
    "koi8_ru": "koi8_u",
    "ibm866": "cp866",
    "x_cp1250": "cp1250",
    "x_cp1251": "cp1251",
}
# Labels that promise nothing about 8-bit bytes: read like an undeclared charset.
_NO_PROMISE = frozenset({"ascii", "us_ascii", "ansi_x3.4_1968", "ansi_x3_4_1968", "us", "646"})
_ISO_2022_JP = frozenset({"iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_ext"})

# Windows-1252 as browsers define it: the five bytes Python's cp1252 leaves undefined
# read as the C1 controls of the same value, so no byte is unreadable.
_CP1252_HIGH = "".join(
    bytes([code]).decode("cp1252", "replace").replace("\ufffd", chr(code))
    for code in range(0x80, 0xA0)
)
_LATIN1_TO_CP1252 = str.maketrans({chr(0x80 + i): c for i, c in enumerate(_CP1252_HIGH)})


@lru_cache(maxsize=1)
def _known_codec_names() -> frozenset[str]:
    # Only names Python can resolve are passed to codecs.lookup: its encodings cache
    # remembers every failed name forever, which hostile mail could exploit.
    modules = {info.name for info in pkgutil.iter_modules(encodings.__path__)}
    return frozenset(modules) | frozenset(_CODEC_ALIASES)


@lru_cache(maxsize=256)
def codec_for(label: str) -> str | None:
    """The Python text codec a mail client would use for ``label``, or None if there is
    none (unknown label, byte-to-byte codec) or the label promises nothing (US-ASCII)."""
    name = label.strip().strip("\"'").split("*", 1)[0].lower()
    name = re.sub(r"[^0-9a-z.]+", "_", name).strip("_")
    if name in _NO_PROMISE:
        return None
    name = _CLIENT_LABELS.get(name, name)
    known = _known_codec_names()
    if name not in known:
        name = name.replace(".", "_")
        name = _CLIENT_LABELS.get(name, name)
        if name not in known:
            return None
    try:
        codec = codecs.lookup(name).name
        # Rejects byte-to-byte codecs (base64, zlib) and ones that cannot replace.
        b"a".decode(codec, "replace")
    except Exception:
        return None
    return codec


def decode_undeclared(raw: bytes) -> str:
    """Bytes with no usable declared charset: UTF-8, else Windows-1252 (every byte reads)."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.end == len(raw) and exc.reason == "unexpected end of data":
            # UTF-8 cut off inside its last character (a truncated name or subject).
            return raw[: exc.start].decode("utf-8") + "\ufffd"
        return _windows_1252(raw)


def _windows_1252(raw: bytes) -> str:
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1").translate(_LATIN1_TO_CP1252)


def decode_text(raw: bytes, label: str) -> str:
    """Decode ``raw`` declared as charset ``label`` by the module's rule. Never raises."""
    codec = codec_for(label) if label else None
    if codec is None:
        return decode_undeclared(raw)
    if codec == "cp1252":
        return _windows_1252(raw)
    try:
        return raw.decode(codec)
    except Exception:
        pass
    if not raw.isascii():
        # Mislabelled UTF-8 is common; 7-bit text cannot be UTF-8 that failed elsewhere.
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec in _ISO_2022_JP:
        return _iso2022jp_as_cp932(raw)
    try:
        return raw.decode(codec, "replace")
    except Exception:
        return decode_undeclared(raw)


_JIS_SWITCH = re.compile(rb"\x1b(\$[@B]|\$\(D|\([BJI])")


def _iso2022jp_as_cp932(raw: bytes) -> str:
    """ISO-2022-JP with the vendor rows (NEC specials such as "№", IBM extensions) that
    Japanese mailers send: each JIS X 0208 pair is mapped to Shift_JIS and read with
    Windows-31J, as mail clients do."""
    out: list[str] = []
    mode = b"(B"
    pieces = _JIS_SWITCH.split(raw)
    for index, piece in enumerate(pieces):
        if index % 2:
            mode = piece
            continue
        if mode in (b"$@", b"$B", b"$(D"):
            sjis = bytearray()
            for pos in range(0, len(piece) - 1, 2):
                first, second = piece[pos], piece[pos + 1]
                if not (0x21 <= first <= 0x7E and 0x21 <= second <= 0x7E):
                    sjis += b"??"
                    continue
                lead = ((first - 0x21) >> 1) + 0x81
                if lead > 0x9F:
                    lead += 0x40
                trail = second + 0x1F + (second >= 0x60) if first % 2 else second + 0x7E
                sjis += bytes((lead, trail))
            out.append(sjis.decode("cp932", "replace"))
            if len(piece) % 2:
                out.append("\ufffd")
        elif mode == b"(I":
            kana = bytes(byte | 0x80 if 0x21 <= byte <= 0x5F else byte for byte in piece)
            out.append(kana.decode("cp932", "replace"))
        else:
            out.append(piece.decode("ascii", "replace"))
    return "".join(out)
