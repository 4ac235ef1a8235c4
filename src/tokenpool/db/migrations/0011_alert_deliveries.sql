-- What each alert channel last delivered, per pool. A health alert goes out on a channel when the pool's
-- state differs from the state that channel last delivered, and the row advances only once the channel
-- accepted the alert: a failed delivery (SNS without credentials, a webhook answering 500) is retried at
-- the next check instead of being recorded as sent, and a channel that keeps failing does not make the
-- others repeat themselves. pool_alert_state (0002), which recorded the state before sending, is no longer
-- written; it stays for processes of the previous release during a rolling upgrade.
--
-- sending / sending_until: one checker's claim on a delivery in progress, so that concurrent checkers
-- (two workers, a worker and `tokenpool health`, a Lambda) send each change once. A claim whose checker
-- died or hung mid-send lapses at sending_until and the next check takes it over.

CREATE TABLE pool_alert_deliveries (
    pool          text        NOT NULL,
    channel       text        NOT NULL,
    status        text,                      -- the state this channel last delivered; NULL: none yet
    delivered_at  timestamptz,
    sending       text,
    sending_until timestamptz,
    PRIMARY KEY (pool, channel),
    CONSTRAINT pool_alert_deliveries_channel_known CHECK (channel IN ('log', 'sns', 'webhook')),
    CONSTRAINT pool_alert_deliveries_status_known CHECK (status IN ('OK', 'LOW', 'CRITICAL', 'EMPTY')),
    CONSTRAINT pool_alert_deliveries_sending_known CHECK (sending IN ('OK', 'LOW', 'CRITICAL', 'EMPTY')),
    CONSTRAINT pool_alert_deliveries_claim_whole CHECK ((sending IS NULL) = (sending_until IS NULL))
);

-- What was alerted before this migration counts as delivered on every channel: the upgrade must not
-- repeat a LOW every channel already had (a failed delivery then was not retried anyway).
INSERT INTO pool_alert_deliveries (pool, channel, status, delivered_at)
SELECT state.pool, channel.name, state.status, state.changed_at
FROM pool_alert_state AS state CROSS JOIN (VALUES ('log'), ('sns'), ('webhook')) AS channel (name);
