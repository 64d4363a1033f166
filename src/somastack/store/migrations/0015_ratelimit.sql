-- Sliding-window rate limit log, used when Redis is not configured.
CREATE UNLOGGED TABLE IF NOT EXISTS rate_hits (
  bucket text NOT NULL,
  at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_hits_bucket_idx ON rate_hits (bucket, at);
