"""The warehouse schema: numbered forward migrations, applied in order when a database is opened.

Add a migration by appending to ``MIGRATIONS``; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the catalog, prompts, collected responses, grades, collection failures, embeddings.
    """
    CREATE TABLE llms (
        name VARCHAR PRIMARY KEY,
        base_url VARCHAR NOT NULL,
        model_id VARCHAR NOT NULL,
        api_key_env VARCHAR,                       -- the NAME of an environment variable, never a key
        usd_per_mtok_in DOUBLE NOT NULL CHECK (usd_per_mtok_in >= 0),
        usd_per_mtok_out DOUBLE NOT NULL CHECK (usd_per_mtok_out >= 0),
        max_concurrency INTEGER NOT NULL CHECK (max_concurrency > 0),
        requests_per_minute INTEGER CHECK (requests_per_minute > 0),
        added_at TIMESTAMP NOT NULL,
        active BOOLEAN NOT NULL
    );
    CREATE TABLE prompts (
        prompt_id VARCHAR PRIMARY KEY,
        dataset VARCHAR NOT NULL,
        split VARCHAR NOT NULL CHECK (split IN ('train', 'validation', 'test')),
        category VARCHAR,
        text VARCHAR NOT NULL,                     -- what the router sees
        prompt VARCHAR NOT NULL,                   -- what the LLM is asked (rendered)
        reference VARCHAR,                         -- the reference answer
        grader VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL              -- hash of text: embeddings are keyed by it
    );
    CREATE TABLE responses (
        model VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        response VARCHAR NOT NULL,
        finish_reason VARCHAR,
        prompt_tokens INTEGER CHECK (prompt_tokens >= 0),
        completion_tokens INTEGER CHECK (completion_tokens >= 0),
        latency_ms DOUBLE CHECK (latency_ms >= 0),
        cost_usd DOUBLE CHECK (cost_usd >= 0),
        prompt_hash VARCHAR NOT NULL,              -- hash of the rendered prompt actually sent
        collected_at TIMESTAMP NOT NULL,
        run_id VARCHAR NOT NULL,
        PRIMARY KEY (model, prompt_id)
    );
    CREATE TABLE grades (
        model VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        score DOUBLE NOT NULL CHECK (score >= 0 AND score <= 1),
        grader VARCHAR NOT NULL,
        grader_version VARCHAR NOT NULL,
        graded_at TIMESTAMP NOT NULL,
        PRIMARY KEY (model, prompt_id)
    );
    CREATE TABLE collection_failures (
        model VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        attempts INTEGER NOT NULL CHECK (attempts > 0),
        last_error_class VARCHAR NOT NULL,         -- e.g. HTTP 503, ReadTimeout; never a response body
        last_failed_at TIMESTAMP NOT NULL,
        run_id VARCHAR NOT NULL,
        PRIMARY KEY (model, prompt_id)
    );
    CREATE TABLE embeddings (
        embedder_id VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL,
        vector FLOAT[] NOT NULL,
        PRIMARY KEY (embedder_id, content_hash)
    );
    """,
    # 2: fitted cluster maps (files on disk, registered here) and each LLM's error features per map.
    """
    CREATE TABLE cluster_maps (
        version VARCHAR PRIMARY KEY,               -- content hash of parameters and training data
        kind VARCHAR NOT NULL,
        n_clusters INTEGER NOT NULL CHECK (n_clusters > 0),
        embedder_id VARCHAR NOT NULL,
        training_llms VARCHAR[] NOT NULL,
        n_train_prompts INTEGER NOT NULL,
        path VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL
    );
    CREATE TABLE llm_features (
        model VARCHAR NOT NULL,
        cluster_map_version VARCHAR NOT NULL,
        psi DOUBLE[] NOT NULL,
        overall_error DOUBLE NOT NULL CHECK (overall_error >= 0 AND overall_error <= 1),
        n_validation INTEGER NOT NULL,
        computed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (model, cluster_map_version)
    );
    """,
    # 3: the latest data-check outcome per LLM and check: routers use only LLMs whose checks pass.
    """
    CREATE TABLE llm_checks (
        model VARCHAR NOT NULL,
        check_name VARCHAR NOT NULL,
        passed BOOLEAN NOT NULL,
        details VARCHAR NOT NULL,                  -- JSON: failing expectations and sample values
        checked_at TIMESTAMP NOT NULL,
        PRIMARY KEY (model, check_name)
    );
    """,
    # 4: which endpoint answered each response; re-profiling archives the answers it replaces (kept, and
    # compared with the new ones for drift) instead of overwriting them.
    """
    ALTER TABLE responses ADD COLUMN base_url VARCHAR;
    ALTER TABLE responses ADD COLUMN model_id VARCHAR;
    UPDATE responses SET base_url = l.base_url, model_id = l.model_id FROM llms l WHERE l.name = responses.model;
    CREATE TABLE responses_archive (
        model VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        response VARCHAR NOT NULL,
        finish_reason VARCHAR,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_ms DOUBLE,
        cost_usd DOUBLE,
        prompt_hash VARCHAR NOT NULL,
        collected_at TIMESTAMP NOT NULL,
        run_id VARCHAR NOT NULL,
        base_url VARCHAR,
        model_id VARCHAR,
        archived_at TIMESTAMP NOT NULL,
        reason VARCHAR NOT NULL,                   -- 'endpoint changed' or 're-profiled'
        PRIMARY KEY (model, prompt_id, archived_at)
    );
    CREATE TABLE grades_archive (
        model VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        score DOUBLE NOT NULL,
        grader VARCHAR NOT NULL,
        grader_version VARCHAR NOT NULL,
        graded_at TIMESTAMP NOT NULL,
        archived_at TIMESTAMP NOT NULL,
        PRIMARY KEY (model, prompt_id, archived_at)
    );
    """,
    # 5: any dataset. A dataset records how its prompts are rendered (template, request parameters, what the router
    # embeds) and whether its LLMs can be asked them; a prompt keeps the chat messages and parameters it is sent with
    # (their hash tells a stale answer), its grader's options, code tests and free metadata; an answer records the
    # request it answered and whether it was collected or imported; grades record the judge (LLM-as-judge) and its
    # cost apart from the graded LLM's, and judge verdicts are cached so regrading never pays twice. LLMs that exist
    # only as imported results have no endpoint and may have no prices.
    """
    CREATE TABLE datasets (
        name VARCHAR PRIMARY KEY,
        spec VARCHAR NOT NULL,                     -- JSON: template, request parameters, router text, grader
        template_version VARCHAR NOT NULL,         -- hash of what changes the requests sent
        collectable BOOLEAN NOT NULL,              -- false: results only (imported), never asked of an endpoint
        source VARCHAR,                            -- where it was imported from
        updated_at TIMESTAMP NOT NULL
    );
    ALTER TABLE prompts ADD COLUMN messages VARCHAR;          -- JSON chat messages sent (null: one user message)
    ALTER TABLE prompts ADD COLUMN request_params VARCHAR;    -- JSON: max_tokens, temperature, stop
    ALTER TABLE prompts ADD COLUMN request_hash VARCHAR;      -- hash of messages + parameters
    ALTER TABLE prompts ADD COLUMN grader_options VARCHAR;    -- JSON
    ALTER TABLE prompts ADD COLUMN tests VARCHAR;             -- code the answer is run against (code grader)
    ALTER TABLE prompts ADD COLUMN metadata VARCHAR;          -- JSON: the prompt file's other columns
    ALTER TABLE responses ALTER COLUMN response DROP NOT NULL; -- imported results may carry no answer text
    ALTER TABLE responses ADD COLUMN request_hash VARCHAR;    -- the request answered (null: unknown, or imported)
    ALTER TABLE responses ADD COLUMN template_version VARCHAR;
    ALTER TABLE responses ADD COLUMN request_params VARCHAR;
    ALTER TABLE responses ADD COLUMN source VARCHAR DEFAULT 'collected';  -- 'collected' or 'imported'
    UPDATE responses SET source = 'collected';
    ALTER TABLE responses_archive ALTER COLUMN response DROP NOT NULL;
    ALTER TABLE responses_archive ADD COLUMN request_hash VARCHAR;
    ALTER TABLE responses_archive ADD COLUMN template_version VARCHAR;
    ALTER TABLE responses_archive ADD COLUMN request_params VARCHAR;
    ALTER TABLE responses_archive ADD COLUMN source VARCHAR;
    ALTER TABLE grades ADD COLUMN judge VARCHAR;              -- the judge LLM and its model id (llm_judge)
    ALTER TABLE grades ADD COLUMN judge_cost_usd DOUBLE;                -- checked on write (warehouse._tables)
    ALTER TABLE grades_archive ADD COLUMN judge VARCHAR;
    ALTER TABLE grades_archive ADD COLUMN judge_cost_usd DOUBLE;
    CREATE TABLE judge_cache (
        key VARCHAR PRIMARY KEY,                   -- hash of judge, its model id, grader version, prompt, answer
        judge VARCHAR NOT NULL,
        score DOUBLE NOT NULL CHECK (score >= 0 AND score <= 1),
        verdict VARCHAR,
        cost_usd DOUBLE CHECK (cost_usd >= 0),
        created_at TIMESTAMP NOT NULL
    );
    ALTER TABLE llms ALTER COLUMN base_url DROP NOT NULL;    -- import-only LLMs have no endpoint
    ALTER TABLE llms ALTER COLUMN usd_per_mtok_in DROP NOT NULL;
    ALTER TABLE llms ALTER COLUMN usd_per_mtok_out DROP NOT NULL;
    """,
    # 6: the routing gateway's decision log, one row per routed request (loaded from its Parquet files by the
    # routing_decisions asset): ids, hashes and numbers, never prompt text or keys. Times are UTC. The log's ``at`` is
    # stored as ``decided_at``: DuckDB 2.0 reserves AT (AT TIME ZONE), so a column named at needs quotes everywhere.
    """
    CREATE TABLE routing_decisions (
        request_id VARCHAR PRIMARY KEY,
        decided_at TIMESTAMP NOT NULL,             -- the log's "at"
        key_id VARCHAR,
        prompt_hash VARCHAR,
        router_version VARCHAR,
        model_requested VARCHAR,
        chosen_llm VARCHAR,                        -- null: no LLM answered (every attempt failed, or refused)
        cost_weight DOUBLE,
        budget_kind VARCHAR NOT NULL               -- what bounded the choice ('none': the router's default)
            CHECK (budget_kind IN ('max_cost_per_query', 'min_accuracy', 'cost_weight', 'none')),
        budget_value DOUBLE,
        candidates VARCHAR[],
        predicted_error VARCHAR,                   -- JSON {llm: e}
        predicted_cost VARCHAR,                    -- JSON {llm: usd}
        attempts VARCHAR,                          -- JSON [{llm, try_number, status, error, seconds}]
        status INTEGER NOT NULL,
        prompt_tokens INTEGER CHECK (prompt_tokens >= 0),
        completion_tokens INTEGER CHECK (completion_tokens >= 0),
        realised_cost_usd DOUBLE CHECK (realised_cost_usd >= 0),
        latency_ms DOUBLE CHECK (latency_ms >= 0),
        stream BOOLEAN,
        loaded_at TIMESTAMP NOT NULL               -- when it reached the warehouse
    );
    """,
    # 7: staged collection files merged into the warehouse (profiling/staging.py), one row per file, written in the
    # same transaction as the file's answers and failures: a file merged twice (a crash after the commit, before the
    # file was moved aside) is recognised and adds nothing.
    """
    CREATE TABLE staging_merges (
        file VARCHAR PRIMARY KEY,                  -- path under the staging root: model=<m>/<stamp>-<run>-<n>.parquet
        merged_at TIMESTAMP NOT NULL,
        answers INTEGER NOT NULL CHECK (answers >= 0),                -- answer rows the file held
        answers_stored INTEGER NOT NULL CHECK (answers_stored >= 0),  -- of them, new to responses
        failures INTEGER NOT NULL CHECK (failures >= 0)               -- failure rows the file held
    );
    """,
    # 8: a price per query as well as per million tokens (an LLM priced by the query, or imported results without
    # costs or tokens), and answers whose token counts were estimated from their text with the embedder's tokenizer
    # (imported results with per-token prices and no counts). DuckDB adds no column with a CHECK: _tables.py checks.
    """
    ALTER TABLE llms ADD COLUMN usd_per_query DOUBLE;
    ALTER TABLE responses ADD COLUMN tokens_estimated BOOLEAN DEFAULT false;
    ALTER TABLE responses_archive ADD COLUMN tokens_estimated BOOLEAN;
    """,
    # 9: what a routed request's decision keeps for learning from traffic later, without its text (null for
    # named-model requests and for decisions logged before): the embedder, the prompt's cluster weights Phi(x), and
    # the router's first three LLMs in ranked order with their predicted error and cost.
    """
    ALTER TABLE routing_decisions ADD COLUMN embedder_id VARCHAR;
    ALTER TABLE routing_decisions ADD COLUMN cluster_weights DOUBLE[];
    ALTER TABLE routing_decisions ADD COLUMN ranked_llms VARCHAR[];
    ALTER TABLE routing_decisions ADD COLUMN ranked_predicted_error DOUBLE[];
    ALTER TABLE routing_decisions ADD COLUMN ranked_predicted_cost DOUBLE[];   -- USD per query
    """,
    # 10: what comes back from traffic. Every rating of a routed request (the gateway's POST /v1/feedback, or
    # `uniroute import-feedback`), kept as history: the latest of a request stands (warehouse.traffic). And the
    # opt-in sample of traffic: STORED USER TEXT (prompt, messages, answer), one row per request, deleted once older
    # than the retention (traffic.retention_days). Times are UTC.
    """
    CREATE TABLE traffic_feedback (
        feedback_id VARCHAR PRIMARY KEY,           -- one per rating: the gateway's uuid, or a hash of an imported row
        request_id VARCHAR NOT NULL,               -- the decision's (routing_decisions may not hold it: counted)
        key_id VARCHAR,                            -- the client key that rated (null: no keys, or imported)
        score DOUBLE NOT NULL CHECK (score >= 0 AND score <= 1),  -- thumbs up 1, down 0
        rated_at TIMESTAMP NOT NULL,               -- the file's "at"
        source VARCHAR NOT NULL,                   -- 'api' or 'import:<file name>'
        loaded_at TIMESTAMP NOT NULL
    );
    CREATE TABLE traffic_samples (
        request_id VARCHAR PRIMARY KEY,
        sampled_at TIMESTAMP NOT NULL,             -- the file's "at": retention counts from it
        key_id VARCHAR,
        router_version VARCHAR,
        chosen_llm VARCHAR,
        prompt VARCHAR,                            -- the text the router embedded
        messages VARCHAR,                          -- JSON: the request's messages
        answer VARCHAR,                            -- the answer's text (a stream's pieces joined)
        embedder_id VARCHAR,
        cluster_weights DOUBLE[],                  -- Phi(x)
        loaded_at TIMESTAMP NOT NULL
    );
    """,
    # 11: what the pipeline learns from traffic. The judge's verdict on a sampled request (traffic_outcomes: an LLM
    # judge with a reference-free rubric; feedback wins over it, both kept), and the judge's spend apart from the
    # routed LLMs': one row per call, its worst case reserved before the call and what it cost settled after, so a
    # USD/day cap over the UTC day's rows is never passed. The online evaluation's cells of a router version (per
    # LLM and cluster), which the per-LLM traffic check reads.
    """
    CREATE TABLE traffic_judgements (
        request_id VARCHAR NOT NULL,
        judge VARCHAR NOT NULL,                    -- the judge's catalog name
        grader_version VARCHAR NOT NULL,           -- llm_judge's version (rubric, scale, ...)
        score DOUBLE NOT NULL CHECK (score >= 0 AND score <= 1),
        judged_by VARCHAR,                         -- "<judge>@<model id that answered>"
        cost_usd DOUBLE CHECK (cost_usd >= 0),     -- paid for this verdict now (0: from the judge cache)
        cached BOOLEAN NOT NULL,
        judged_at TIMESTAMP NOT NULL,
        PRIMARY KEY (request_id, judge, grader_version)
    );
    CREATE TABLE judge_spend (
        spend_id VARCHAR PRIMARY KEY,              -- one per judge call
        judge VARCHAR NOT NULL,
        request_id VARCHAR NOT NULL,
        day DATE NOT NULL,                         -- the UTC day it was reserved on: the cap is per day
        reserved_usd DOUBLE NOT NULL CHECK (reserved_usd >= 0),  -- the call's worst case, before it
        cost_usd DOUBLE CHECK (cost_usd >= 0),     -- settled: what it cost (null: in flight, counts as reserved)
        status VARCHAR NOT NULL CHECK (status IN ('reserved', 'paid', 'failed')),  -- failed: counted at worst case
        reserved_at TIMESTAMP NOT NULL,
        settled_at TIMESTAMP
    );
    CREATE TABLE online_evaluation_cells (
        router_version VARCHAR NOT NULL,
        llm VARCHAR NOT NULL,
        cluster INTEGER NOT NULL,
        count INTEGER NOT NULL,
        observed_error DOUBLE,
        predicted_error DOUBLE,
        difference DOUBLE,
        se DOUBLE,
        z DOUBLE,
        alarm BOOLEAN NOT NULL,                    -- observed error past predicted by more than z SEs
        message VARCHAR NOT NULL,
        evaluated_at TIMESTAMP NOT NULL,
        PRIMARY KEY (router_version, llm, cluster)
    );
    """,
    # 12: rolling out a new router (serving/rollout.py): the alias whose version served a decision (router_version;
    # 'challenger' for a canary request) and the other version's choice from the same embedding (the shadow: null
    # when none was loaded, or its embedder differed), with its predicted error and cost per query (USD).
    """
    ALTER TABLE routing_decisions ADD COLUMN served_alias VARCHAR;
    ALTER TABLE routing_decisions ADD COLUMN shadow_version VARCHAR;
    ALTER TABLE routing_decisions ADD COLUMN shadow_llm VARCHAR;
    ALTER TABLE routing_decisions ADD COLUMN shadow_predicted_error DOUBLE;
    ALTER TABLE routing_decisions ADD COLUMN shadow_predicted_cost DOUBLE;
    """,
    # 13: each LLM's onboarding plan, one row per LLM, rewritten by every
    # profiling run: how many validation prompts it is meant to have answered after the run (``target``: all of
    # them, or the first ``onboarding.fraction`` of the planner's order for a new LLM) of the ``total`` then, the
    # fraction and budget it ran with, and the run's cost estimate. ``target < total``: a partial profile.
    """
    CREATE TABLE onboarding_plans (
        model VARCHAR PRIMARY KEY,
        target INTEGER NOT NULL CHECK (target >= 0),
        total INTEGER NOT NULL CHECK (total >= 0),
        fraction DOUBLE NOT NULL CHECK (fraction > 0 AND fraction <= 1),
        budget_usd DOUBLE CHECK (budget_usd >= 0),            -- null: no budget
        estimate_usd DOUBLE CHECK (estimate_usd >= 0),        -- the run's estimate, before it asked anything
        planned_at TIMESTAMP NOT NULL
    );
    """,
    # 14: drift confirmed by asking again (profiling/recheck.py): per (LLM, cluster) of a router version, each time
    # its stored answers were asked again, how many prompts, how many got worse or better than stored, the errors
    # before and now, the sign test's p-value and z, whether it changed, what the new answers cost, and the cell's
    # rated requests then (a cell is asked again only after enough new ones). ``checked_at`` is also the
    # ``archived_at`` of the answers it replaced (reason 'drift re-check').
    """
    CREATE TABLE drift_rechecks (
        llm VARCHAR NOT NULL,
        cluster INTEGER NOT NULL,
        router_version VARCHAR NOT NULL,
        checked_at TIMESTAMP NOT NULL,
        rated INTEGER NOT NULL CHECK (rated >= 0),            -- the cell's rated requests on traffic then
        traffic_z DOUBLE,                                     -- the online evaluation's z that raised the suspicion
        asked INTEGER NOT NULL CHECK (asked >= 0),
        worse INTEGER NOT NULL CHECK (worse >= 0),
        better INTEGER NOT NULL CHECK (better >= 0),
        stored_error DOUBLE,
        new_error DOUBLE,
        p_value DOUBLE NOT NULL CHECK (p_value >= 0 AND p_value <= 1),
        z DOUBLE NOT NULL,
        changed BOOLEAN NOT NULL,
        cost_usd DOUBLE CHECK (cost_usd >= 0),                -- what the new answers cost
        message VARCHAR NOT NULL,
        PRIMARY KEY (llm, cluster, router_version, checked_at)
    );
    """,
]
