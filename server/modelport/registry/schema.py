"""The registry's migrations, numbered by position; PRAGMA user_version records how far a file is."""

MIGRATIONS: list[str] = [
    # 1: models, builds, deployments and their events, tokens, audit
    """
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        auth INTEGER NOT NULL DEFAULT 1,
        owner TEXT NOT NULL,
        access_key_hash TEXT NOT NULL,
        next_build INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE builds (
        id INTEGER PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        status TEXT NOT NULL,
        digest TEXT,
        entrypoint TEXT NOT NULL,
        python TEXT NOT NULL,
        requirements TEXT,
        message TEXT NOT NULL DEFAULT '',
        labels TEXT NOT NULL DEFAULT '{}',
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT,
        input_schema TEXT,
        output_schema TEXT,
        example_input TEXT,
        example_output TEXT,
        size_bytes INTEGER NOT NULL DEFAULT 0,
        new_bytes INTEGER NOT NULL DEFAULT 0,
        snapshot TEXT,
        manifest TEXT,
        lock_digest TEXT,
        env_python TEXT,
        git_commit TEXT,
        UNIQUE (model_id, number)
    );
    CREATE TABLE build_objects (
        build_id INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
        digest TEXT NOT NULL,
        PRIMARY KEY (build_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX build_objects_digest ON build_objects (digest);
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        build_id INTEGER NOT NULL REFERENCES builds(id),
        build_number INTEGER NOT NULL,
        status TEXT NOT NULL,
        replicas INTEGER NOT NULL,
        memory_mb INTEGER,
        timeout_s REAL NOT NULL,
        max_concurrency INTEGER NOT NULL,
        queue_timeout_s REAL NOT NULL,
        max_body_mb REAL NOT NULL,
        env TEXT NOT NULL DEFAULT '{}',
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        reason TEXT
    );
    CREATE INDEX deployments_model ON deployments (model_id, id);
    CREATE TABLE deployment_events (
        id INTEGER PRIMARY KEY,
        deployment_id INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX deployment_events_deployment ON deployment_events (deployment_id, id);
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        deployment_id INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        slot INTEGER NOT NULL,
        build_number INTEGER NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        served INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        started_at TEXT,
        exited_at TEXT,
        reason TEXT
    );
    CREATE INDEX replicas_deployment ON replicas (deployment_id, slot);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        models TEXT NOT NULL DEFAULT '[]',
        hash TEXT NOT NULL UNIQUE,
        created_by TEXT,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        last_used_at TEXT,
        revoked_at TEXT
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        model TEXT,
        target TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_model ON audit (model, id);
    """,
    # 2: monitoring series, per-prediction metrics, request captures, capture settings
    """
    CREATE TABLE metric_points (
        model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        build INTEGER NOT NULL,
        res INTEGER NOT NULL,
        t INTEGER NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        server_errors INTEGER NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL DEFAULT 0,
        hist BLOB,
        request_bytes INTEGER NOT NULL DEFAULT 0,
        response_bytes INTEGER NOT NULL DEFAULT 0,
        cpu_s REAL NOT NULL DEFAULT 0,
        memory_bytes INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (model_id, t, build, res)
    ) WITHOUT ROWID;
    CREATE INDEX metric_points_res_t ON metric_points (res, t);
    CREATE TABLE tracked_metrics (
        id INTEGER PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        request_id TEXT NOT NULL,
        build INTEGER,
        at REAL NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}',
        UNIQUE (model_id, request_id)
    );
    CREATE INDEX tracked_metrics_at ON tracked_metrics (model_id, at, id);
    CREATE INDEX tracked_metrics_age ON tracked_metrics (at);
    CREATE TABLE captures (
        id INTEGER PRIMARY KEY,
        model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        build INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        at REAL NOT NULL,
        status INTEGER NOT NULL,
        latency_s REAL NOT NULL,
        request BLOB NOT NULL,
        response BLOB NOT NULL,
        truncated INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX captures_build ON captures (model_id, build, id);
    CREATE INDEX captures_age ON captures (at);
    ALTER TABLE deployments ADD COLUMN capture_percent REAL NOT NULL DEFAULT 0;
    ALTER TABLE deployments ADD COLUMN capture_max_bytes INTEGER NOT NULL DEFAULT 65536;
    """,
    # 3: a model's per-caller rate limit (null: none)
    """
    ALTER TABLE models ADD COLUMN rate_limit_per_s REAL;
    ALTER TABLE models ADD COLUMN rate_limit_burst INTEGER;
    """,
    # 4: the sandbox's settings of a deployment: network (1 = allowed) and the boot limit
    """
    ALTER TABLE deployments ADD COLUMN network INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE deployments ADD COLUMN boot_timeout_s REAL NOT NULL DEFAULT 300;
    """,
    # 5: env values sealed at rest (registry/sealed.py); rows before it are sealed at the next
    # start (deployments.seal_clear_env), which sets the flag
    """
    ALTER TABLE deployments ADD COLUMN env_sealed INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: what nothing read: the replicas table (replicas live in the supervisor's memory; the API
    # shows them from there) and a build's env_python (the environment is found by lock digest).
    # DROP COLUMN needs SQLite 3.35 or newer.
    """
    DROP TABLE replicas;
    ALTER TABLE builds DROP COLUMN env_python;
    """,
]
