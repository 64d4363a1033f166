-- Full-text queries scan the GIN index's pending list (fastupdate) linearly, and the list grows
-- to gin_pending_list_limit (4 MB, tens of thousands of memories) between merges: recall's
-- lexical list then cost up to several ms more per query after a bulk import. Writes now insert
-- into the index directly, and whatever is pending is merged once here.
ALTER INDEX memories_tsv_idx SET (fastupdate = off);
SELECT gin_clean_pending_list('memories_tsv_idx'::regclass);
