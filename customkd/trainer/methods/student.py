"""``student``: the student alone, no teacher. L = CE(θ^c_s(f_s), y) on labeled samples."""

from __future__ import annotations

from dataclasses import dataclass

from customkd.trainer.methods.base import Method


@dataclass(frozen=True)
class StudentParams:
    """No settings: the task loss has no weight of its own."""


class StudentOnly(Method):
    """The task loss alone (:meth:`Method.own_parts`); with registered terms it is ``kd`` or ``dkd``."""

    params: StudentParams
