"""The price file loads, covers the instance types the report compares, and refuses malformed entries."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loadtest.prices import DEFAULT_PRICES, PriceFileError, load_prices

REQUIRED = ("g4dn.xlarge", "g4dn.2xlarge", "inf2.xlarge", "inf2.8xlarge", "c7g.xlarge", "c7g.2xlarge",
            "c7g.4xlarge", "m7g.xlarge", "c6i.xlarge")


def test_the_shipped_price_file_is_valid_dated_and_marked_for_verification() -> None:
    table = load_prices()
    assert set(REQUIRED) <= set(table.instances)
    assert table.region == "us-east-1" and table.currency == "USD" and table.verify_before_use
    assert "verify before use" in table.caption and table.as_of.isoformat() in table.caption
    assert table.instances["g4dn.xlarge"].family == "gpu" and table.instances["inf2.xlarge"].family == "inf2"
    assert table.price("no-such.type") is None


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(DEFAULT_PRICES.read_text())
    mutate(raw)
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: raw["instances"]["c7g.xlarge"].update(usd_per_hour=-0.1),
     r"instances\.c7g\.xlarge\.usd_per_hour: Input should be greater than 0 \(got -0\.1\)"),
    (lambda raw: raw["instances"]["c7g.xlarge"].update(usd_per_hour="cheap"),
     r"instances\.c7g\.xlarge\.usd_per_hour"),
    (lambda raw: raw["instances"]["m7g.xlarge"].pop("family"), r"instances\.m7g\.xlarge\.family: Field required"),
    (lambda raw: raw["instances"]["m7g.xlarge"].update(famliy="cpu"), r"famliy: Extra inputs are not permitted"),
    (lambda raw: raw["instances"].update({"C7G XL": raw["instances"]["c7g.xlarge"]}),
     "not an instance type name: C7G XL"),
    (lambda raw: raw.update(currency="EUR"), r"currency: Input should be 'USD'"),
    (lambda raw: raw.pop("as_of"), r"as_of: Field required"),
])
def test_a_malformed_entry_is_reported_with_its_path(tmp_path: Path, mutate, message: str) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(PriceFileError, match=message) as error:
        load_prices(path)
    assert str(path) in str(error.value)


def test_unreadable_or_non_yaml_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="cannot read"):
        load_prices(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: [unclosed\n")
    with pytest.raises(PriceFileError, match="not valid YAML"):
        load_prices(bad)
