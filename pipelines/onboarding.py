"""A new LLM's onboarding settings from the environment, shared by the onboarding sensor and the nightly schedule
(read at each tick; unset: ``llm_responses.config.onboarding``'s defaults), and the estimate a sensor's run carries
in its tags."""

from collections.abc import Mapping

import duckdb

import warehouse as wh
from assets.profiling_config import OnboardingConfig, ProfilingConfig
from assets.resources import WarehouseResource
from profiling.onboarding import estimate_onboarding

#: Variable -> ``llm_responses.config.onboarding`` field: the share of the validation prompts a new LLM is asked
#: first, and the USD its profile may cost.
ONBOARDING_ENV = {"UNIROUTE_ONBOARDING_FRACTION": "fraction", "UNIROUTE_ONBOARDING_BUDGET_USD": "budget_usd"}
#: Seconds a sensor tick waits for a writer to let go of the warehouse before launching without an estimate.
ESTIMATE_WAIT_S = 5.0


def onboarding_settings(environ: Mapping[str, str]) -> dict[str, float]:
    """The :data:`ONBOARDING_ENV` variables set in ``environ``, as config fields; one that is not a number raises,
    naming it (the run refuses a number out of range, naming its field)."""
    settings = {}
    for name, field in ONBOARDING_ENV.items():
        text = environ.get(name, "").strip()
        if text:
            try:
                settings[field] = float(text)
            except ValueError:
                raise ValueError(f"{name}={text!r}: expected a number") from None
    return settings


def profiling_ops_config(settings: Mapping[str, float]) -> dict:
    """The ``ops`` run config that gives ``llm_responses`` these onboarding ``settings`` (empty: its defaults)."""
    return {"llm_responses": {"config": {"onboarding": dict(settings)}}} if settings else {}


def estimate_tags(warehouse: WarehouseResource, entry: Mapping, settings: Mapping[str, float]) -> dict[str, str]:
    """Run tags with what profiling the catalog ``entry`` from nothing is estimated to ask and cost
    (``profiling.onboarding.estimate_onboarding``), and its budget; ``uniroute/estimate`` says why there is none."""
    fraction = settings.get("fraction", OnboardingConfig().fraction)
    budget = settings.get("budget_usd")
    tags = {
        "uniroute/onboarding_fraction": f"{fraction:g}",
        "uniroute/budget_usd": "none" if budget is None else f"{budget:g}",
    }
    try:
        with warehouse.connect_read_only(lock_wait_s=ESTIMATE_WAIT_S) as con:
            estimate = estimate_onboarding(con, dict(entry), ProfilingConfig().splits, fraction)
    except (FileNotFoundError, duckdb.IOException, wh.SchemaError) as exc:
        return tags | {"uniroute/estimate": f"unavailable ({type(exc).__name__}): the run logs its own"}
    except ValueError as exc:
        return tags | {"uniroute/estimate": f"unavailable: {exc}"}
    return tags | estimate.tags()
