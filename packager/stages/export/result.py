"""What an export made, and how it reads on the terminal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packager.errors import StageError


@dataclass
class ExportResult:
    run_dir: Path
    files: list[Path]
    parity: dict
    rejected: dict

    def summary(self) -> str:
        lines = [f"exported {file}" for file in self.files]
        for q, p in self.parity.items():
            verdict = "passed" if p["passed"] else "FAILED: " + "; ".join(p["failures"])
            lines.append(f"parity {q}: top-1 {p['top1_agreement']:.3f}, KL {p['mean_kl']:.4f}, perplexity x"
                         f"{p['perplexity_ratio']:.3f}, greedy {p['greedy_agreement']:.2f} -> {verdict}")
        return "\n".join(lines)

    def raise_for_rejected(self) -> None:
        """A GGUF that failed parity fails the command, after it was recorded as failed."""
        if self.rejected:
            raise StageError("export", f"{len(self.rejected)} GGUF file(s) failed parity and were moved to "
                                       f"{self.run_dir / 'export' / 'rejected'}: {', '.join(self.rejected)}",
                             hint="use a higher-precision type (q8_0, Q6_K); small models quantize badly")
