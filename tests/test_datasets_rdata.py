"""R data loaders on small files written here in R's own formats.

No R is needed: ``RSerializer`` below writes R's XDR serialization (R Internals,
"Serialization formats") byte by byte, as R's serialize.c does: a flags word per
object (type | object bit << 8 | attribute bit << 9 | tag bit << 10 | levels << 12),
then lengths and big-endian payloads, attributes as a trailing pairlist ended
by NILVALUE_SXP, and repeated symbols as back-references. ``.rda`` files are
"RDX2\\n" + a version-2 stream of a pairlist of named objects, compressed like
the packages' files (kernlab's spam.rda: bzip2; mlbench's Shuttle.rda: xz).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib

import numpy as np
import pytest

from polyak.bench.datasets import DataFormatError, DatasetMissing, load_austen, load_shuttle, load_spam
from polyak.bench.datasets.rdata_loaders import AUSTEN_NOVELS, read_lazyload_db, read_rda

NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP = 255, 254
ASCII_MASK, UTF8_MASK = 64, 8
NA_INTEGER = -(2**31)


def _int(value: int) -> bytes:
    return struct.pack(">i", value)


class RSerializer:
    """Writes one R serialization stream (format version 2 or 3, XDR).

    Builders return lists of parts (bytes, or a symbol name wrapped in a tuple) so
    that ``encode`` can number symbols in stream order, as R's reference table does.
    """

    def __init__(self, version: int = 2):
        self.version = version

    @staticmethod
    def flags(sxp_type, *, is_object=False, has_attributes=False, has_tag=False, levels=0) -> bytes:
        return _int(sxp_type | is_object << 8 | has_attributes << 9 | has_tag << 10 | levels << 12)

    def header(self) -> bytes:
        out = b"X\n" + _int(self.version) + _int(0x00040202)
        if self.version == 2:
            return out + _int(0x00020300)
        encoding = b"UTF-8"
        return out + _int(0x00030500) + _int(len(encoding)) + encoding

    @classmethod
    def charsxp(cls, text) -> bytes:
        if text is None:
            return cls.flags(CHARSXP) + _int(-1)
        data = text.encode("utf-8")
        return cls.flags(CHARSXP, levels=ASCII_MASK if text.isascii() else UTF8_MASK) + _int(len(data)) + data

    def encode(self, parts) -> bytes:
        """Header + the parts, with the first use of a symbol written out and later uses as REFSXP."""
        table, out = {}, [self.header()]
        for part in parts:
            if isinstance(part, tuple):
                (name,) = part
                if name in table:
                    out.append(_int(table[name] << 8 | REFSXP))
                else:
                    table[name] = len(table) + 1
                    out.append(self.flags(SYMSXP) + self.charsxp(name))
            else:
                out.append(part)
        return b"".join(out)

    def attributes(self, attrs) -> list:
        parts = []
        for name, value in attrs:
            parts += [self.flags(LISTSXP, has_tag=True), (name,)] + value
        return parts + [_int(NILVALUE_SXP)]

    def vector(self, sxp_type, payload: list, length: int, attrs=(), is_object=False) -> list:
        head = self.flags(sxp_type, is_object=is_object, has_attributes=bool(attrs)) + _int(length)
        return [head] + payload + (self.attributes(attrs) if attrs else [])

    def strings(self, values, attrs=()) -> list:
        return self.vector(STRSXP, [self.charsxp(v) for v in values], len(values), attrs)

    def doubles(self, values, attrs=()) -> list:
        values = np.asarray(values, dtype=">f8")
        return self.vector(REALSXP, [values.tobytes()], values.size, attrs)

    def integers(self, values, attrs=(), is_object=False) -> list:
        values = np.asarray(values, dtype=">i4")
        return self.vector(INTSXP, [values.tobytes()], values.size, attrs, is_object)

    def logicals(self, values) -> list:
        return self.vector(LGLSXP, [np.asarray(values, dtype=">i4").tobytes()], len(values))

    def named_list(self, items, attrs=(), is_object=False) -> list:
        names = self.strings([name for name, _ in items])
        payload = [part for _, value in items for part in value]
        return self.vector(VECSXP, payload, len(items), (("names", names),) + tuple(attrs), is_object)

    def factor(self, codes_1based, levels) -> list:
        attrs = (("levels", self.strings(levels)), ("class", self.strings(["factor"])))
        return self.integers(codes_1based, attrs, is_object=True)

    def data_frame(self, columns, num_rows: int) -> list:
        # Like the packages' files: row names "1".."n" stored as strings.
        attrs = (
            ("row.names", self.strings([str(i + 1) for i in range(num_rows)])),
            ("class", self.strings(["data.frame"])),
        )
        return self.named_list(columns, attrs, is_object=True)

    def rda(self, objects) -> bytes:
        """The uncompressed body of an .rda file: a pairlist of (name, object)."""
        parts = [part for name, value in objects for part in [self.flags(LISTSXP, has_tag=True), (name,)] + value]
        return b"RDX2\n" + self.encode(parts + [_int(NILVALUE_SXP)])


def write_binary_frame_rda(path, object_name, features, class_name, codes, levels, compress):
    writer = RSerializer(version=2)
    columns = [(f"V{j + 1}", writer.doubles(features[:, j])) for j in range(features.shape[1])]
    columns.append((class_name, writer.factor(np.asarray(codes) + 1, levels)))
    raw = writer.rda([(object_name, writer.data_frame(columns, features.shape[0]))])
    path.write_bytes(compress(raw))
    return path


SHUTTLE_LEVELS = ["Rad.Flow", "Fpv.Close", "Fpv.Open", "High", "Bypass", "Bpv.Close", "Bpv.Open"]


@pytest.fixture
def spam_folder(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.random((6, 57)).round(3)
    codes = np.array([1, 0, 1, 1, 0, 0])  # levels nonspam=0, spam=1
    write_binary_frame_rda(tmp_path / "spam.rda", "spam", features, "type", codes, ["nonspam", "spam"], bz2.compress)
    return tmp_path, features, codes


def test_spam_rda_bzip2(spam_folder):
    folder, features, codes = spam_folder
    X, y = load_spam(folder)
    assert X.dtype == np.float32 and X.shape == (6, 57)
    np.testing.assert_array_equal(X, features.astype(np.float32))
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, codes)


def test_shuttle_rda_xz_positive_class_is_rad_flow(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.integers(-50, 120, size=(9, 9)).astype(float)
    codes = np.array([0, 3, 0, 4, 1, 0, 2, 5, 6])
    write_binary_frame_rda(tmp_path / "Shuttle.rda", "Shuttle", features, "Class", codes, SHUTTLE_LEVELS, lzma.compress)
    X, y = load_shuttle(tmp_path)
    np.testing.assert_array_equal(X, features.astype(np.float32))
    np.testing.assert_array_equal(y, (codes == 0).astype(np.int64))


def test_gzip_rda_and_symbol_references_round_trip(tmp_path):
    writer = RSerializer(version=2)
    frame = writer.data_frame(
        [("a", writer.doubles([1.5, -2.0])), ("kind", writer.factor([2, 1], ["x", "y"]))], 2
    )
    path = tmp_path / "two.rda"
    path.write_bytes(gzip.compress(writer.rda([("first", frame), ("flag", writer.logicals([1, 0]))])))
    objects = read_rda(path)
    assert sorted(objects) == ["first", "flag"]
    assert list(objects["first"]["kind"]) == ["y", "x"]
    np.testing.assert_array_equal(objects["first"]["a"].to_numpy(), [1.5, -2.0])


def test_spam_with_wrong_levels_names_them(tmp_path):
    features = np.zeros((2, 57))
    write_binary_frame_rda(tmp_path / "spam.rda", "spam", features, "type", [0, 1], ["ham", "junk"], bz2.compress)
    with pytest.raises(DataFormatError, match=r"levels \['ham', 'junk'\].*'spam'"):
        load_spam(tmp_path)


def test_spam_with_wrong_feature_count(tmp_path):
    write_binary_frame_rda(tmp_path / "spam.rda", "spam", np.zeros((2, 5)), "type", [0, 1], ["nonspam", "spam"], bz2.compress)
    with pytest.raises(DataFormatError, match="expected 57 feature columns, found 5"):
        load_spam(tmp_path)


def test_spam_wrong_object_name(tmp_path):
    write_binary_frame_rda(tmp_path / "spam.rda", "notspam", np.zeros((2, 57)), "type", [0, 1], ["nonspam", "spam"], bz2.compress)
    with pytest.raises(DataFormatError, match="no object named 'spam'"):
        load_spam(tmp_path)


def test_truncated_rda_is_a_clear_error(spam_folder):
    folder, _, _ = spam_folder
    path = folder / "spam.rda"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataFormatError, match="corrupt or truncated"):
        load_spam(folder)


def test_missing_rda_points_to_the_file(tmp_path):
    with pytest.raises(DatasetMissing, match="spam.rda"):
        load_spam(tmp_path)


def test_loader_without_root_names_the_fetch_command(tmp_path):
    with pytest.raises(DatasetMissing, match="polyak data fetch kernlab"):
        load_spam(data_dir=tmp_path)
    with pytest.raises(DatasetMissing, match="polyak data fetch mlbench"):
        load_shuttle(data_dir=tmp_path)
    with pytest.raises(DatasetMissing, match="polyak data fetch austen"):
        load_austen(data_dir=tmp_path)


# ---- R lazy-load DB (Rdata.rdb / Rdata.rdx), as tools:::makeLazyLoadDB writes it ----


def _frame_entry(raw: bytes, compressed) -> bytes:
    length = struct.pack(">I", len(raw))
    if compressed is True:
        return length + zlib.compress(raw)
    kind, data = compressed
    encoded = {
        b"Z": zlib.compress,
        b"2": bz2.compress,
        b"0": lambda d: d,
        b"X": lambda d: lzma.compress(d, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]),
    }[kind](raw)
    return length + kind + encoded


def write_lazyload_db(prefix, objects, compressed=True):
    """objects: name -> list of lines. compressed: True, or (type byte, 2 or 3)."""
    database, locations = b"", []
    for name, lines in objects.items():
        writer = RSerializer(version=3)
        entry = _frame_entry(writer.encode(writer.strings(lines)), compressed)
        locations.append((name, len(database), len(entry)))
        database += entry
    writer = RSerializer(version=3)
    variables = writer.named_list([(name, writer.integers([offset, length])) for name, offset, length in locations])
    flag = writer.logicals([1]) if compressed is True else writer.doubles([compressed[1]])
    index = writer.encode(
        writer.named_list([("variables", variables), ("references", writer.named_list([])), ("compressed", flag)])
    )
    prefix.with_name(prefix.name + ".rdb").write_bytes(database)
    # R writes the index with saveRDS: a gzip file.
    prefix.with_name(prefix.name + ".rdx").write_bytes(gzip.compress(index))


NOVELS = {
    # Stored alphabetically, like the package; load_austen must reorder by publication.
    "emma": ["EMMA", "", "By Jane Austen", "Emma Woodhouse, handsome, clever, and rich,"],
    "mansfieldpark": ["MANSFIELD PARK", "(1814)"],
    "northangerabbey": ["NORTHANGER ABBEY"],
    "persuasion": ["Persuasion", "", "by", "", "Jane Austen", "", "(1818)"],
    "prideprejudice": ["PRIDE AND PREJUDICE", "", "It is a truth universally acknowledged, £"],
    "sensesensibility": ["SENSE AND SENSIBILITY", "", "by Jane Austen"],
}


def test_austen_lazyload_db_joins_novels_in_publication_order(tmp_path):
    write_lazyload_db(tmp_path / "Rdata", NOVELS)
    text = load_austen(tmp_path)
    expected = "\n".join(line for name in AUSTEN_NOVELS for line in NOVELS[name])
    assert text == expected
    assert text.startswith("SENSE AND SENSIBILITY\n") and text.endswith("(1818)")
    assert "£" in text  # non-ASCII lines are read as UTF-8


@pytest.mark.parametrize("compressed", [(b"Z", 2), (b"2", 3), (b"X", 3), (b"0", 3)])
def test_lazyload_db_other_compressions(tmp_path, compressed):
    write_lazyload_db(tmp_path / "Rdata", {"a": ["x", "yz"], "b": ["w"]}, compressed)
    objects = read_lazyload_db(tmp_path / "Rdata")
    assert [list(objects["a"]), list(objects["b"])] == [["x", "yz"], ["w"]]


def test_lazyload_db_reads_only_requested_names(tmp_path):
    write_lazyload_db(tmp_path / "Rdata", {"a": ["1"], "b": ["2"]})
    assert list(read_lazyload_db(tmp_path / "Rdata", ["b"])) == ["b"]
    with pytest.raises(DataFormatError, match=r"variables \['c'\] not in the index"):
        read_lazyload_db(tmp_path / "Rdata", ["c"])


def test_truncated_rdb_is_a_clear_error(tmp_path):
    write_lazyload_db(tmp_path / "Rdata", NOVELS)
    rdb = tmp_path / "Rdata.rdb"
    rdb.write_bytes(rdb.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match="beyond the file's"):
        load_austen(tmp_path)


def test_corrupt_rdb_entry_is_a_clear_error(tmp_path):
    write_lazyload_db(tmp_path / "Rdata", NOVELS)
    rdb = tmp_path / "Rdata.rdb"
    data = bytearray(rdb.read_bytes())
    data[8:16] = b"\xff" * 8  # inside the first entry's zlib stream
    rdb.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="corrupt or truncated"):
        load_austen(tmp_path)


def test_austen_missing_novel(tmp_path):
    write_lazyload_db(tmp_path / "Rdata", {k: v for k, v in NOVELS.items() if k != "emma"})
    with pytest.raises(DataFormatError, match="emma"):
        load_austen(tmp_path)


def test_missing_rdx(tmp_path):
    (tmp_path / "Rdata.rdb").write_bytes(b"")
    with pytest.raises(DatasetMissing, match="Rdata.rdx"):
        load_austen(tmp_path)
