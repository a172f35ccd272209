import numpy as np
import pytest

from offroadseg.errors import ConfigError, DataError
from offroadseg.taxonomy import load_taxonomy, taxonomy_from_dict


def test_duality_has_eleven_classes_with_raw_values():
    tax = load_taxonomy("duality")
    assert tax.num_classes == 11
    assert [c.values[0] for c in tax.classes] == [0, 100, 200, 300, 500, 550, 600, 700, 800, 7100, 10000]
    assert tax.names[6] == "Flowers"
    assert tax.raw_dtype == np.uint16


def test_duality10_folds_flowers_into_background():
    tax = load_taxonomy("duality10")
    assert tax.num_classes == 10
    assert tax.encode(np.array([[600, 0, 10000]], dtype=np.uint16)).tolist() == [[0, 0, 9]]


def test_encode_decode_roundtrip_keeps_uint16():
    tax = load_taxonomy("duality")
    raw = np.array([[0, 100, 7100], [10000, 600, 550]], dtype=np.uint16)
    ids = tax.encode(raw)
    assert ids.dtype == np.uint8
    assert ids.tolist() == [[0, 1, 9], [10, 6, 5]]
    back = tax.decode(ids)
    assert back.dtype == np.uint16
    assert (back == raw).all()


def test_unknown_values_are_listed_with_pixel_counts():
    tax = load_taxonomy("duality")
    raw = np.array([[0, 123, 123], [999, 100, 100]], dtype=np.uint16)
    with pytest.raises(DataError) as exc:
        tax.encode(raw, source="mask.png")
    msg = str(exc.value)
    assert (
        "mask.png" in msg and "123 (2 px)" in msg and "999 (1 px)" in msg and "unknown_values=ignore" in msg
    )


def test_unknown_values_can_be_ignored():
    tax = load_taxonomy("duality")
    ids = tax.encode(np.array([[5, 100]], dtype=np.uint16), unknown="ignore")
    assert ids.tolist() == [[255, 1]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_lookup_path_gives_what_the_general_path_gives(dtype, tmp_path):
    # uint8 / uint16 masks take a lookup table; int64 masks the np.unique path: the same ids, and
    # with unknown values the same refusal (naming the values and their pixels) or the same ignores
    tsv = tmp_path / "classes.tsv"
    tsv.write_text("id\tname\tR\tG\tB\n0\tvoid\t0\t0\t0\n3\ttrail\t10\t20\t30\n200\tsky\t0\t0\t255\n")
    tax = load_taxonomy(tsv, ignore_values=[0])
    rng = np.random.default_rng(0)
    known = rng.choice(np.array([0, 3, 200], dtype=dtype), size=(37, 53))
    assert (tax.encode(known) == tax.encode(known.astype(np.int64))).all()
    assert set(np.unique(tax.encode(known)).tolist()) == {0, 1, 255}
    odd = known.copy()
    odd[5, 7], odd[9, :3] = 7, 199
    fast, general = tax.encode(odd, unknown="ignore"), tax.encode(odd.astype(np.int64), unknown="ignore")
    assert fast.dtype == general.dtype == np.uint8 and (fast == general).all()
    assert fast[5, 7] == fast[9, 0] == 255
    with pytest.raises(DataError, match=r"m\.png: .*7 \(1 px\), 199 \(3 px\)"):
        tax.encode(odd, source="m.png")
    assert tax.encode(np.zeros((0, 4), dtype=dtype)).shape == (0, 4)


def test_ignore_values_map_to_ignore_index(tmp_path):
    tsv = tmp_path / "classes.tsv"
    tsv.write_text("id\tname\tR\tG\tB\n0\tvoid\t0\t0\t0\n1\ttrail\t10\t20\t30\n2\tsky\t0\t0\t255\n")
    tax = load_taxonomy(tsv, ignore_values=[0])
    assert tax.names == ["trail", "sky"]
    assert tax.encode(np.array([[0, 1, 2]], dtype=np.uint8)).tolist() == [[255, 0, 1]]


def test_tsv_with_values_and_rgb_encoding(tmp_path):
    tsv = tmp_path / "classes.tsv"
    tsv.write_text("id\tname\tR\tG\tB\n0\troad\t29\t28\t33\n1\tsky\t32\t39\t232\n")
    tax = load_taxonomy(tsv, encoding="rgb")
    rgb = np.array([[[29, 28, 33], [32, 39, 232]]], dtype=np.uint8)
    assert tax.encode(rgb).tolist() == [[0, 1]]
    with pytest.raises(DataError, match=r"rgb\(1,2,3\)"):
        tax.encode(np.array([[[1, 2, 3]]], dtype=np.uint8))


def test_yaml_taxonomy(tmp_path):
    f = tmp_path / "tax.yaml"
    f.write_text(
        "name: mine\nignore: [255]\nclasses:\n"
        "  - {value: 0, name: ground, color: [100, 80, 60]}\n"
        "  - {values: [7, 8], name: sky, color: [0, 0, 255]}\n"
    )
    tax = load_taxonomy(f)
    assert tax.name == "mine"
    assert tax.encode(np.array([[0, 7, 8, 255]], dtype=np.uint8)).tolist() == [[0, 1, 1, 255]]


def test_unknown_name_lists_builtins():
    with pytest.raises(ConfigError, match="did you mean: duality"):
        load_taxonomy("dualty")


def test_duplicate_value_refused(tmp_path):
    f = tmp_path / "tax.yaml"
    f.write_text("classes:\n  - {value: 1, name: a}\n  - {value: 1, name: b}\n")
    with pytest.raises(ConfigError, match="raw value 1"):
        load_taxonomy(f)


def test_to_dict_roundtrip():
    tax = load_taxonomy("duality10")
    assert taxonomy_from_dict(tax.to_dict()) == tax


def test_pixel_counts_known_answer():
    tax = load_taxonomy("duality", ignore_values=(42,))
    raw = np.array([[0, 0, 100, 7100], [10000, 42, 123, 123]], dtype=np.uint16)
    per_class, ignored, unknown = tax.pixel_counts(raw)
    expected = np.zeros(11, dtype=np.int64)
    expected[[0, 1, 9, 10]] = [2, 1, 1, 1]
    assert per_class.tolist() == expected.tolist() and ignored == 1 and unknown == {"123": 2}
    # the same answer as encode gives, for a mask it accepts
    ok = np.where(raw == 123, 0, raw).astype(np.uint16)
    ids = tax.encode(ok)
    assert tax.pixel_counts(ok)[0].tolist() == np.bincount(ids[ids < 11], minlength=11).tolist()


def test_pixel_counts_of_colour_masks():
    tax = taxonomy_from_dict(
        {
            "name": "c",
            "encoding": "rgb",
            "classes": [
                {"values": [0], "name": "a", "color": [255, 0, 0]},
                {"values": [1], "name": "b", "color": [0, 0, 255]},
            ],
        }
    )
    raw = np.array([[[255, 0, 0], [0, 0, 255], [0, 0, 255], [9, 9, 9]]], dtype=np.uint8)
    per_class, ignored, unknown = tax.pixel_counts(raw)
    assert per_class.tolist() == [1, 2] and ignored == 0 and unknown == {"rgb(9,9,9)": 1}
