-- The schema as of the first versioned release: every table and index that
-- fosterd created before migrations were versioned. Each statement is
-- idempotent, so it also records an unversioned store (already brought to
-- this shape by adoptUnversioned) as version 1 without changing it.
-- Never edit an applied migration: add the next numbered file instead.

-- +goose Up
CREATE TABLE IF NOT EXISTS models (
	name TEXT PRIMARY KEY,
	hardware_ids TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	cert_validity BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
	hash TEXT PRIMARY KEY,
	serial TEXT NOT NULL,
	model TEXT NOT NULL REFERENCES models(name),
	expires_at BIGINT NOT NULL,
	created_by TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	used_at BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (
	id TEXT PRIMARY KEY,
	serial TEXT NOT NULL,
	model TEXT NOT NULL REFERENCES models(name),
	status TEXT NOT NULL,
	cert_serial TEXT NOT NULL,
	cert_not_after BIGINT NOT NULL,
	cert_pem TEXT NOT NULL,
	enrolled_at BIGINT NOT NULL,
	installed_version TEXT NOT NULL DEFAULT '',
	installed_target TEXT NOT NULL DEFAULT '',
	installed_counter BIGINT NOT NULL DEFAULT 0,
	last_attestation_at BIGINT NOT NULL DEFAULT 0,
	last_sequence BIGINT NOT NULL DEFAULT 0,
	key_sha256 TEXT NOT NULL DEFAULT '',
	reprovision_at BIGINT NOT NULL DEFAULT 0,
	reprovision_by TEXT NOT NULL DEFAULT '',
	revoked_at BIGINT NOT NULL DEFAULT 0,
	revoke_reason TEXT NOT NULL DEFAULT '',
	replaced_cert_serial TEXT NOT NULL DEFAULT '',
	hardware_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS releases (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	model TEXT NOT NULL REFERENCES models(name),
	version TEXT NOT NULL,
	counter BIGINT NOT NULL,
	target_path TEXT NOT NULL UNIQUE,
	sha256 TEXT NOT NULL,
	length BIGINT NOT NULL,
	created_by TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	UNIQUE (model, version),
	UNIQUE (model, counter)
);
CREATE TABLE IF NOT EXISTS attestations (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	device_id TEXT NOT NULL REFERENCES devices(id),
	sequence BIGINT NOT NULL,
	outcome TEXT NOT NULL,
	target_path TEXT NOT NULL,
	sha256 TEXT NOT NULL,
	version TEXT NOT NULL,
	counter BIGINT NOT NULL,
	envelope TEXT NOT NULL,
	received_at BIGINT NOT NULL,
	leaf_index BIGINT NOT NULL DEFAULT -1,
	cert_serial TEXT NOT NULL DEFAULT '',
	UNIQUE (device_id, sequence)
);
CREATE TABLE IF NOT EXISTS audit_events (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	actor TEXT NOT NULL,
	action TEXT NOT NULL,
	detail TEXT NOT NULL,
	at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
	serial TEXT PRIMARY KEY,
	subject TEXT NOT NULL,
	key_sha256 TEXT NOT NULL,
	not_before BIGINT NOT NULL,
	not_after BIGINT NOT NULL,
	issued_at BIGINT NOT NULL,
	issued_via TEXT NOT NULL,
	issued_by TEXT NOT NULL DEFAULT '',
	revoked_at BIGINT NOT NULL DEFAULT 0,
	revoke_reason_code INTEGER NOT NULL DEFAULT 0,
	revoke_reason TEXT NOT NULL DEFAULT '',
	enroll_token TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS certificates_subject ON certificates (subject);
CREATE INDEX IF NOT EXISTS certificates_revoked ON certificates (revoked_at);
CREATE TABLE IF NOT EXISTS used_token_ids (
	issuer TEXT NOT NULL,
	jti TEXT NOT NULL,
	expires_at BIGINT NOT NULL,
	used_at BIGINT NOT NULL,
	PRIMARY KEY (issuer, jti)
);
CREATE TABLE IF NOT EXISTS device_refusals (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	device_id TEXT NOT NULL,
	reason TEXT NOT NULL,
	key_sha256 TEXT NOT NULL,
	via TEXT NOT NULL,
	at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_refusals_device ON device_refusals (device_id);
CREATE TABLE IF NOT EXISTS crl (
	id INTEGER PRIMARY KEY,
	number BIGINT NOT NULL,
	this_update BIGINT NOT NULL,
	expires_at BIGINT NOT NULL,
	duration BIGINT NOT NULL,
	der TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stations (
	name TEXT PRIMARY KEY,
	status TEXT NOT NULL,
	quota BIGINT NOT NULL,
	used BIGINT NOT NULL DEFAULT 0,
	not_before BIGINT NOT NULL,
	not_after BIGINT NOT NULL,
	models TEXT NOT NULL,
	serial_pattern TEXT NOT NULL,
	cert_serial TEXT NOT NULL,
	created_by TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	revoked_at BIGINT NOT NULL DEFAULT 0,
	revoked_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tuf_state (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	timestamp_version BIGINT NOT NULL,
	timestamp_etag TEXT NOT NULL
);
INSERT INTO tuf_state (id, timestamp_version, timestamp_etag) VALUES (1, 0, '') ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS devices_serial ON devices (serial);
CREATE INDEX IF NOT EXISTS attestations_outcome ON attestations (outcome, device_id, counter);
CREATE TABLE IF NOT EXISTS rollouts (
	id TEXT PRIMARY KEY,
	model TEXT NOT NULL REFERENCES models(name),
	version TEXT NOT NULL,
	target_path TEXT NOT NULL,
	groups_key TEXT NOT NULL,
	group_list TEXT NOT NULL,
	waves TEXT NOT NULL,
	wave INTEGER NOT NULL,
	wave_interval BIGINT NOT NULL,
	max_failure_rate DOUBLE PRECISION NOT NULL,
	min_sample BIGINT NOT NULL,
	silence_deadline BIGINT NOT NULL,
	seed TEXT NOT NULL,
	state TEXT NOT NULL,
	revision BIGINT NOT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	wave_starts TEXT NOT NULL,
	halt_reason TEXT NOT NULL,
	halt_indices TEXT NOT NULL,
	created_by TEXT NOT NULL,
	updated_by TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_active_groups ON rollouts (model, groups_key) WHERE state IN ('running', 'paused');
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_active_target ON rollouts (target_path) WHERE state IN ('running', 'paused');
CREATE INDEX IF NOT EXISTS rollouts_model ON rollouts (model, created_at);
CREATE INDEX IF NOT EXISTS devices_model_id ON devices (model, id);
CREATE INDEX IF NOT EXISTS attestations_target ON attestations (target_path, received_at);
CREATE TABLE IF NOT EXISTS device_tags (
	device_id TEXT NOT NULL REFERENCES devices(id),
	tag TEXT NOT NULL,
	PRIMARY KEY (device_id, tag)
);
CREATE INDEX IF NOT EXISTS device_tags_tag ON device_tags (tag, device_id);
CREATE TABLE IF NOT EXISTS device_groups (
	name TEXT PRIMARY KEY,
	kind TEXT NOT NULL,
	tag TEXT NOT NULL,
	created_by TEXT NOT NULL,
	created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_groups_tag ON device_groups (tag);
CREATE TABLE IF NOT EXISTS group_serials (
	group_name TEXT NOT NULL REFERENCES device_groups(name),
	serial TEXT NOT NULL,
	PRIMARY KEY (group_name, serial)
);
CREATE INDEX IF NOT EXISTS group_serials_serial ON group_serials (serial);

-- +goose Down
-- The baseline is not reversible: restore a backup instead.
SELECT 1;
