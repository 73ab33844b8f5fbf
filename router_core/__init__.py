"""router_core: the UniRoute algorithm (Jitkrittum et al., arXiv 2502.08773) as a plain library.

Prompts are embedded (:class:`Embedder`), a cluster map assigns them to K clusters
(:class:`KMeansClusterMap`, :class:`LearnedClusterMap`), each LLM becomes its per-cluster validation error
(:func:`llm_error_features`), and :class:`UniRouter` picks argmin_h [Phi(x) . Psi(h) + cost_weight * cost(h)].
Baselines share the API; :mod:`router_core.evaluation` measures deferral curves and
:mod:`router_core.plots` draws them.
No Dagster, no MLflow: those layers call this one.
"""

from router_core._errors import NotFittedError, RouterInputError
from router_core.cluster_maps import ClusterMap, KMeansClusterMap, LearnedClusterMap
from router_core.embedding import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_EMBEDDER,
    DEFAULT_MAX_SEQ_LENGTH,
    Embedder,
    EmbeddingCache,
    count_tokens,
    prompt_hash,
)
from router_core.evaluation import (
    DEFAULT_ACCURACY_TOLERANCE,
    BudgetMix,
    CurveComparison,
    OperatingPoint,
    audc,
    budget_mix,
    compare_curves,
    concave_hull,
    default_cost_weights,
    default_operating_point,
    deferral_curve,
    evaluate_router,
    operating_point,
    out_of_fold_errors,
    qnc,
    single_llm_points,
    summarize_curve,
)
from router_core.features import llm_error_features, psi_drift
from router_core.frames import assign_splits, check_llms, check_outcomes, check_prompts, error_matrix, value_matrix
from router_core.persistence import load_cluster_map, load_router, save_cluster_map, save_router
from router_core.plots import plot_deferral_curves, plot_psi_heatmap, version_figures
from router_core.routers import KNNRouter, OracleRouter, RandomRouter, Router, UniRouter, ZeroRouter, choose
from router_core.scoring import PoolFit, RouterScores, fit_pool, score_router
from router_core.servable import ServableRouter

__all__ = [
    "BACKENDS",
    "DEFAULT_ACCURACY_TOLERANCE",
    "DEFAULT_BACKEND",
    "DEFAULT_EMBEDDER",
    "DEFAULT_MAX_SEQ_LENGTH",
    "BudgetMix",
    "ClusterMap",
    "CurveComparison",
    "Embedder",
    "EmbeddingCache",
    "KMeansClusterMap",
    "KNNRouter",
    "LearnedClusterMap",
    "NotFittedError",
    "OperatingPoint",
    "OracleRouter",
    "PoolFit",
    "RandomRouter",
    "Router",
    "RouterInputError",
    "RouterScores",
    "ServableRouter",
    "UniRouter",
    "ZeroRouter",
    "assign_splits",
    "audc",
    "budget_mix",
    "check_llms",
    "check_outcomes",
    "check_prompts",
    "choose",
    "compare_curves",
    "concave_hull",
    "count_tokens",
    "default_cost_weights",
    "default_operating_point",
    "deferral_curve",
    "error_matrix",
    "evaluate_router",
    "fit_pool",
    "llm_error_features",
    "load_cluster_map",
    "load_router",
    "operating_point",
    "out_of_fold_errors",
    "plot_deferral_curves",
    "plot_psi_heatmap",
    "prompt_hash",
    "psi_drift",
    "qnc",
    "save_cluster_map",
    "save_router",
    "score_router",
    "single_llm_points",
    "summarize_curve",
    "value_matrix",
    "version_figures",
]
