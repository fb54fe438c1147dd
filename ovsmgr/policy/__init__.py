"""The policy front end: strict YAML, the model, validation and resolution."""

from ovsmgr.policy.diagnostics import Diagnostic, PolicyError, Severity, Span
from ovsmgr.policy.ir import ResolvedPolicy
from ovsmgr.policy.resolve import check_policy, load_policy, load_policy_text

__all__ = [
    "Diagnostic", "PolicyError", "ResolvedPolicy", "Severity", "Span", "check_policy", "load_policy",
    "load_policy_text",
]
