"""The building blocks of every config section: paths resolved against the config file, checked names and
texts, and the section base class (unknown keys refused, frozen, documented by attribute docstrings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, model_validator

from packager.names import check_modelfile_text, check_name, check_one_line, check_pinned_image


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("config_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return (Path(base) / value).resolve()


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


SafeName = Annotated[str, AfterValidator(check_name)]

OneLine = Annotated[str, AfterValidator(check_one_line)]
ModelfileText = Annotated[str, AfterValidator(check_modelfile_text)]
PinnedImage = Annotated[str, AfterValidator(check_pinned_image)]


class Section(BaseModel):
    # Sections default to {} and defaults are validated, so a default path is
    # resolved against the config file exactly like a path the user wrote.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        """``train:`` with every key below it commented out is YAML's null: the section's defaults."""
        if not isinstance(data, dict):
            return data
        return {k: {} if v is None and _is_section(cls.model_fields.get(k)) else v for k, v in data.items()}


def _is_section(field) -> bool:
    return field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, Section)
