"""What follows what without anyone launching a run (Dagster declarative automation; the daemon evaluates it).

- new prompts are embedded; new embeddings may retrain the cluster map (it skips when its training data is
  unchanged), and new grades never do: a new LLM must not move the map;
- an LLM's features follow its grades (once their blocking checks pass) and every new cluster map;
- the router follows new features, once none are still being computed;
- each LLM's traffic evaluation follows the online evaluation and the drift re-checks.
"""

import dagster as dg

AC = dg.AutomationCondition

#: prompt_embeddings follows prompt_set.
EMBEDDINGS = AC.eager()

#: cluster_map follows new prompt vectors only; grades reach it through the weekly schedule.
CLUSTER_MAP = AC.eager().ignore(dg.AssetSelection.assets("graded_responses"))

#: llm_traffic_evaluation (per LLM, with its drift check) follows every new online evaluation and every re-check of
#: a suspected drift: eager(), except that drift_rechecks (opt-in, it pays for answers) may never have run.
TRAFFIC = (
    AC.in_latest_time_window()
    & (AC.newly_missing() | AC.any_deps_updated()).since_last_handled()
    & ~AC.any_deps_missing().ignore(dg.AssetSelection.assets("drift_rechecks"))
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("eager (drift_rechecks optional)")

#: llm_error_features (per LLM) follows that LLM's checked grades and every new cluster map.
FEATURES = AC.eager() & AC.all_deps_blocking_checks_passed()

# Not eager(): a new cluster map must first reach the features (router runs once they are all done), and an
# LLM left without features (failing checks) must not hold the router back forever.
#: router follows any LLM's new features when no features are in progress.
ROUTER = (
    AC.any_deps_match(AC.newly_updated()).ignore(dg.AssetSelection.assets("cluster_map")).since_last_handled()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("after new features")
