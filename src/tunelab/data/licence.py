"""Licence policy: is this data's licence one the run is allowed to train on?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# the uploader's own statement that they hold the rights to the data (the web page's "I own this"); the datacard
# records who said so, and a policy that wants more removes it from `allowed_licences`
OWNED = "LicenseRef-Owned"


class DataPolicy(BaseModel):
    """What the audit gate accepts. Unknown keys are errors (a typo must not silently relax a gate)."""

    model_config = ConfigDict(extra="forbid")

    allowed_licences: list[str] = Field(
        default_factory=lambda: ["Apache-2.0", "MIT", "BSD-3-Clause", "BSD-2-Clause", "CC0-1.0", "CC-BY-4.0", OWNED]
    )
    unknown_licence: Literal["warn", "fail"] = "warn"
    fail_on_contamination: bool = True
    max_quarantined_ratio: float = Field(0.05, ge=0, le=1)
    # records longer than the max length are quarantined (never trained truncated); when more than this
    # share of them is, the answers the user meant to teach would be lost: the gate says no
    max_too_long_ratio: float = Field(0.05, ge=0, le=1)


@dataclass
class LicenceCheck:
    id: str
    name: str
    status: Literal["allowed", "not-allowed", "unknown"]
    source: str | None
    commercial_use: bool | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "source": self.source,
            "commercial_use": self.commercial_use,
        }


def check_licence(datacard: dict[str, Any] | None, policy: DataPolicy) -> LicenceCheck:
    lic = (datacard or {}).get("licence") or (datacard or {}).get("license")
    if isinstance(lic, str):
        lic = {"id": lic}
    if not isinstance(lic, dict) or not lic.get("id"):
        return LicenceCheck("unknown", "no licence recorded", "unknown", None, None)
    lid = str(lic["id"])
    allowed = {a.casefold() for a in policy.allowed_licences}
    status: Literal["allowed", "not-allowed"] = "allowed" if lid.casefold() in allowed else "not-allowed"
    return LicenceCheck(
        lid, str(lic.get("name", lid)), status, (datacard or {}).get("source"), lic.get("commercial_use")
    )
