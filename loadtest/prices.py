"""The instance price table (loadtest/prices.yaml), validated so a typo cannot silently skew a cost table."""
from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator

DEFAULT_PRICES = Path(__file__).with_name("prices.yaml")
INSTANCE_TYPE = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"


class PriceFileError(ValueError):
    """The price file is missing or malformed; the message names the file and the bad entry."""


class InstancePrice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    usd_per_hour: PositiveFloat
    vcpus: PositiveInt
    memory_gib: PositiveFloat
    family: Literal["cpu", "gpu", "inf2"]
    accelerator: str | None = None


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: Literal["USD"]
    region: str = Field(min_length=1)
    operating_system: str
    purchase_option: Literal["on-demand"]
    as_of: date
    verify_before_use: bool
    instances: dict[str, InstancePrice] = Field(min_length=1)

    @field_validator("instances")
    @classmethod
    def _instance_type_names(cls, instances: dict[str, InstancePrice]) -> dict[str, InstancePrice]:
        bad = [name for name in instances if not re.match(INSTANCE_TYPE, name)]
        if bad:
            raise ValueError(f"not an instance type name: {', '.join(bad)} (expected e.g. 'c7g.xlarge')")
        return instances

    def price(self, instance_type: str) -> float | None:
        entry = self.instances.get(instance_type)
        return entry.usd_per_hour if entry else None

    @property
    def caption(self) -> str:
        warning = " (verify before use)" if self.verify_before_use else ""
        return (f"{self.purchase_option} {self.operating_system} prices in {self.region}, "
                f"{self.currency} per hour, as of {self.as_of.isoformat()}{warning}")


def load_prices(path: Path = DEFAULT_PRICES) -> PriceTable:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise PriceFileError(f"cannot read the price file {path}: {error}") from None
    except yaml.YAMLError as error:
        raise PriceFileError(f"{path} is not valid YAML: {error}") from None
    try:
        return PriceTable.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                             f" (got {e.get('input')!r})" for e in error.errors(include_url=False))
        raise PriceFileError(f"{path} is malformed: {problems}") from None
