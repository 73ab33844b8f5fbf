"""router_core: the UniRoute algorithm (Jitkrittum et al., arXiv 2502.08773) as a plain library.

Prompts are embedded (:class:`Embedder`), a cluster map assigns them to K clusters
(:class:`KMeansClusterMap`, :class:`LearnedClusterMap`), each LLM becomes its per-cluster validation error
(:func:`llm_error_features`), and :class:`UniRouter` picks argmin_h [Phi(x) . Psi(h) + cost_weight * cost(h)].
After deployment, :mod:`router_core.coverage` tells whether traffic still looks like the validation set and
:mod:`router_core.traffic_features` blends Psi with observed traffic outcomes.
Baselines share the API; :mod:`router_core.evaluation` measures deferral curves and
:mod:`router_core.plots` draws them; :mod:`router_core.online` compares what the router predicted with what traffic
shows.
No Dagster, no MLflow: those layers call this one.
"""

from router_core._errors import NotFittedError, RouterInputError
from router_core.cluster_maps import ClusterMap, KMeansClusterMap, LearnedClusterMap
from router_core.coverage import (
    CoverageReference,
    CoverageReport,
    cluster_weight_matrix,
    coverage_report,
    stratified_traffic_sample,
)
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
from router_core.features import effective_counts, llm_error_features, psi_drift, validation_counts
from router_core.frames import assign_splits, check_llms, check_outcomes, check_prompts, error_matrix, value_matrix
from router_core.online import (
    DEFAULT_MIN_COUNT,
    DEFAULT_SELECTION_MARGIN,
    DEFAULT_VALIDATION_COUNT,
    OnlineEvaluation,
    calibration,
    drift_alarms,
    join_outcomes,
    online_evaluation,
    quality_vs_cost,
    validation_count_table,
)
from router_core.persistence import load_cluster_map, load_router, save_cluster_map, save_router
from router_core.plots import (
    plot_coverage,
    plot_deferral_curves,
    plot_drift_heatmap,
    plot_psi_heatmap,
    plot_quality_vs_cost,
    plot_reliability,
    plot_rollout,
    version_figures,
)
from router_core.rollout import RolloutDecision, RolloutRules, rollout_comparison, rollout_decision, shadowed_requests
from router_core.routers import KNNRouter, OracleRouter, RandomRouter, Router, UniRouter, ZeroRouter, choose
from router_core.scoring import PoolFit, RouterScores, fit_pool, score_router
from router_core.servable import ServableRouter
from router_core.traffic_features import (
    TRAFFIC_OUTCOME_COLUMNS,
    TrafficComparison,
    TrafficErrorStats,
    blend_traffic_features,
    compare_on_traffic,
    split_traffic_outcomes,
    traffic_error_stats,
    traffic_prediction_loss,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_ACCURACY_TOLERANCE",
    "DEFAULT_BACKEND",
    "DEFAULT_EMBEDDER",
    "DEFAULT_MAX_SEQ_LENGTH",
    "DEFAULT_MIN_COUNT",
    "DEFAULT_SELECTION_MARGIN",
    "DEFAULT_VALIDATION_COUNT",
    "TRAFFIC_OUTCOME_COLUMNS",
    "BudgetMix",
    "ClusterMap",
    "CoverageReference",
    "CoverageReport",
    "CurveComparison",
    "Embedder",
    "EmbeddingCache",
    "KMeansClusterMap",
    "KNNRouter",
    "LearnedClusterMap",
    "NotFittedError",
    "OnlineEvaluation",
    "OperatingPoint",
    "OracleRouter",
    "PoolFit",
    "RandomRouter",
    "RolloutDecision",
    "RolloutRules",
    "Router",
    "RouterInputError",
    "RouterScores",
    "ServableRouter",
    "TrafficComparison",
    "TrafficErrorStats",
    "UniRouter",
    "ZeroRouter",
    "assign_splits",
    "audc",
    "blend_traffic_features",
    "budget_mix",
    "calibration",
    "check_llms",
    "check_outcomes",
    "check_prompts",
    "choose",
    "cluster_weight_matrix",
    "compare_curves",
    "compare_on_traffic",
    "concave_hull",
    "count_tokens",
    "coverage_report",
    "default_cost_weights",
    "default_operating_point",
    "deferral_curve",
    "drift_alarms",
    "effective_counts",
    "error_matrix",
    "evaluate_router",
    "fit_pool",
    "join_outcomes",
    "llm_error_features",
    "load_cluster_map",
    "load_router",
    "online_evaluation",
    "operating_point",
    "out_of_fold_errors",
    "plot_coverage",
    "plot_deferral_curves",
    "plot_drift_heatmap",
    "plot_psi_heatmap",
    "plot_quality_vs_cost",
    "plot_reliability",
    "plot_rollout",
    "prompt_hash",
    "psi_drift",
    "qnc",
    "quality_vs_cost",
    "rollout_comparison",
    "rollout_decision",
    "save_cluster_map",
    "save_router",
    "score_router",
    "shadowed_requests",
    "single_llm_points",
    "split_traffic_outcomes",
    "stratified_traffic_sample",
    "summarize_curve",
    "traffic_error_stats",
    "traffic_prediction_loss",
    "validation_count_table",
    "validation_counts",
    "value_matrix",
    "version_figures",
]
