"""Settings, read once from the environment (SOMA_*). No other module reads os.environ."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of SomaStack; each field maps to the env var SOMA_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="SOMA_", extra="ignore")

    home: Path = Field(default=Path("~/.soma"), description="state directory (embedded database)")
    database_url: str | None = Field(default=None, description="external PostgreSQL; unset = embedded")
    redis_url: str | None = None
    nats_url: str | None = None

    host: str = "127.0.0.1"
    port: int = 8080
    url: str = Field(default="", description="server URL for CLI/client (default http://host:port)")
    tenant: str = Field(default="default", description="tenant the CLI acts as")

    workers: int = Field(default=1, description="API worker processes; one per core is a good start")
    pool_min: int = 2
    pool_max: int = 10
    gil_switch_ms: float = Field(default=0.5, gt=0, le=100, description="the server's Python thread "
                                 "switch interval (CPython's default is 5 ms)")
    heavy_queries: int = Field(
        default_factory=lambda: (os.cpu_count() or 1) + 1, ge=1,
        description="expensive read queries (recall's candidate query) run at once per process; "
                    "the rest wait their turn (default: cores + 1)")

    embedder: str = Field(default="local", description="local | openai")
    embed_threads: int = Field(default=1, description="onnxruntime intra-op threads per call")
    # Texts per model run when a call brings many (imports): 16 pads less than 64 (each run pads
    # to its longest text) and stays in cache; ingest +20% in paired runs (docs/recall.md, Speed).
    embed_batch: int = Field(default=16, ge=1, le=1024, description="texts per model run")
    # A busy embedder may wait this long for more small requests to share a run. Off by default:
    # on the scale bench it helped when the machine was slow and cost queries/s when it was fast
    # (docs/recall.md, Speed: eighth pass).
    embed_coalesce_ms: float = Field(default=0.0, ge=0, le=100, description="on a busy embedder, "
                                     "how long a small request waits for others to share its run "
                                     "(0: never)")
    embed_url: str | None = Field(default=None, description="OpenAI-compatible /v1 base URL")
    embed_model: str = "text-embedding-3-small"
    embed_api_key: str | None = None
    embed_dims: int | None = Field(default=None, description="dimensions of the remote embedder")

    max_content_bytes: int = 32 * 1024
    max_batch: int = 1000
    recall_candidates: int = Field(default=30, description="size of each first-stage recall list "
                                   "(dense, context, lexical); LoCoMo R@10 is the same at 30 as at 50")

    # agent: LLM providers (tried in order; a failing one falls back to the next)
    llm_providers: str = Field(default="local", description="comma list of local | openai | anthropic")
    llm_model_path: Path | None = Field(default=None, description="GGUF for `local`; unset = SmolLM2-135M")
    llm_ctx: int = Field(default=4096, description="context window of the local model (tokens)")
    llm_threads: int = Field(default=1, description="llama.cpp threads; more than free cores stalls it")
    llm_parallel: int = Field(default=1, description="concurrent sequences (slots) of the local model")
    llm_seed: int = 42
    llm_max_tokens: int = 512
    llm_timeout_s: float = 120.0
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    openai_api_key: str | None = None
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_model: str = "claude-3-5-haiku-latest"
    anthropic_api_key: str | None = None

    # agent: tool broker and sandbox
    sandbox_isolation: str = Field(default="auto", description="auto | namespace | rlimit")
    sandbox_python: str | None = Field(default=None, description="interpreter inside the sandbox")
    sandbox_uid: int = Field(default=65534, description="user the sandbox runs as (when root)")
    sandbox_cpu_s: int = 5
    sandbox_memory_mb: int = 256
    sandbox_max_fds: int = 64
    sandbox_max_procs: int = 32
    sandbox_file_mb: int = 16
    sandbox_timeout_s: float = 10.0
    sandbox_output_bytes: int = 1024 * 1024
    http_fetch_max_bytes: int = 1024 * 1024
    http_fetch_timeout_s: float = 10.0
    tool_idempotency_ttl_s: int = 24 * 3600
    turn_days: float = Field(default=90, gt=0, description="days a turn and its events are kept "
                             "(and its Idempotency-Key remembered); older turns are deleted")

    # ledger: prices in cents; `tokens_per_1k:<provider>` overrides the token price per provider
    price_table: dict[str, float] = Field(default_factory=lambda: {
        "tokens_per_1k": 0.1, "tool_call": 0.05, "egress_per_mb": 0.1, "storage_per_mb": 0.02,
    })

    # governance: identity, constitution, policy, audit, rate limits, outbox
    api_key: str | None = Field(default=None, description="credential the CLI and client send")
    bootstrap: bool = Field(default=True, description="first start: constitution, signer, admin key")
    constitution_trust: Path | None = Field(
        default=None, description="trusted signers JSON {threshold, signers}; unset = home")
    session_ttl_max_s: int = Field(default=24 * 3600, description="longest session token lifetime")
    constitution_check_s: float = Field(default=10.0, description="re-verify the active constitution")
    jwt_issuer: str = "somastack"
    policy_timeout_s: float = Field(default=2.0, description="a slower decision is a denial")
    policy_workers: int = Field(default=1, description="policy evaluator processes")
    rate_limit: int = Field(default=6000, description="requests per tenant and route per window")
    rate_window_s: int = 60
    outbox_stream: str = Field(default="SOMA_EVENTS", description="JetStream stream of domain events")
    outbox_subject: str = Field(default="soma.events", description="subject prefix of domain events")
    outbox_dlq_stream: str = "SOMA_DLQ"
    outbox_dlq_subject: str = "soma.dlq"
    outbox_batch: int = 100
    outbox_poll_s: float = 0.5
    outbox_max_attempts: int = 8
    outbox_backoff_s: float = 1.0
    outbox_backoff_max_s: float = 300.0
    outbox_max_event_bytes: int = 1024 * 1024

    # brain v2: working memory, context bundles, learning, density matrix, FRGO, bridge planner
    wm_capacity: int = Field(default=16, ge=1, le=1024, description="working-memory items per session")
    wm_half_life_s: float = Field(default=900.0, gt=0, description="recency half-life of WM items")
    wm_dedupe_cosine: float = Field(default=0.95, gt=0, le=1, description="near-copy threshold")
    wm_ttl_s: int = Field(default=24 * 3600, gt=0, description="idle session working memory expires")
    brain_trace_size: int = Field(default=50, ge=1, le=500, description="ranked memories a trace keeps")
    brain_trace_days: float = Field(default=30, gt=0, description="days a recall trace is kept for "
                                    "feedback; older traces are deleted")
    brain_learning_rate: float = Field(default=0.2, gt=0, description="step of the θ gradient ascent")
    brain_temperature: float = Field(default=0.5, gt=0, description="softmax τ of the θ learning")
    brain_weight_min: float = Field(default=0.01, ge=0, description="lower bound of every θ_f")
    brain_weight_max: float = Field(default=3.0, gt=0, description="upper bound of every θ_f")
    brain_weight_bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="per-feature [lo, hi] overriding the bounds above")
    brain_density: bool = Field(default=True, description="density-matrix confidence on evaluate")
    brain_density_rate: float = Field(default=0.1, gt=0, le=1, description="EMA rate α of ρ")
    brain_frgo: bool = Field(default=True, description="learn link conductance from feedback")
    frgo_eta: float = Field(default=0.2, gt=0)
    frgo_alpha: float = Field(default=1.0, gt=0)
    frgo_decay: float = Field(default=0.1, ge=0)
    frgo_min: float = Field(default=0.1, gt=0)
    frgo_max: float = Field(default=10.0, gt=0)
    frgo_initial: float = Field(default=1.0, gt=0)
    plan_candidates: int = Field(default=20, ge=2, le=200, description="memories per cue")
    plan_max_nodes: int = Field(default=300, ge=10, le=2000, description="bridge graph size cap")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def server_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"

    @property
    def admin_key_file(self) -> Path:
        """Where the first start leaves the bootstrap admin key (mode 0600) for the local CLI."""
        return self.home_dir / "admin.key"

    @property
    def trust_file(self) -> Path:
        return (self.constitution_trust or self.home_dir / "constitution" / "trust.json").expanduser()

    @property
    def signer_dir(self) -> Path:
        """Private constitution signer keys generated on this machine."""
        return self.home_dir / "signers"

    @property
    def credential(self) -> str | None:
        """SOMA_API_KEY, else the bootstrap admin key this machine's server wrote under home."""
        if self.api_key:
            return self.api_key
        if self.admin_key_file.is_file():
            return self.admin_key_file.read_text().strip() or None
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own Settings instead)."""
    return Settings()
