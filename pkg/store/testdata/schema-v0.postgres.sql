-- The store schema as fosterd created it before versioned migrations (pg_dump --schema-only of a store made by main at 81dd920, session settings and the public. prefix removed).

CREATE TABLE attestations (
    id bigint NOT NULL,
    device_id text NOT NULL,
    sequence bigint NOT NULL,
    outcome text NOT NULL,
    target_path text NOT NULL,
    sha256 text NOT NULL,
    version text NOT NULL,
    counter bigint NOT NULL,
    envelope text NOT NULL,
    received_at bigint NOT NULL,
    leaf_index bigint DEFAULT '-1'::integer NOT NULL,
    cert_serial text DEFAULT ''::text NOT NULL
);

CREATE SEQUENCE attestations_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE attestations_id_seq OWNED BY attestations.id;

CREATE TABLE audit_events (
    id bigint NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    detail text NOT NULL,
    at bigint NOT NULL
);

CREATE SEQUENCE audit_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE audit_events_id_seq OWNED BY audit_events.id;

CREATE TABLE certificates (
    serial text NOT NULL,
    subject text NOT NULL,
    key_sha256 text NOT NULL,
    not_before bigint NOT NULL,
    not_after bigint NOT NULL,
    issued_at bigint NOT NULL,
    issued_via text NOT NULL,
    issued_by text DEFAULT ''::text NOT NULL,
    revoked_at bigint DEFAULT 0 NOT NULL,
    revoke_reason_code integer DEFAULT 0 NOT NULL,
    revoke_reason text DEFAULT ''::text NOT NULL,
    enroll_token text DEFAULT ''::text NOT NULL
);

CREATE TABLE crl (
    id integer NOT NULL,
    number bigint NOT NULL,
    this_update bigint NOT NULL,
    expires_at bigint NOT NULL,
    duration bigint NOT NULL,
    der text NOT NULL
);

CREATE TABLE device_groups (
    name text NOT NULL,
    kind text NOT NULL,
    tag text NOT NULL,
    created_by text NOT NULL,
    created_at bigint NOT NULL
);

CREATE TABLE device_refusals (
    id bigint NOT NULL,
    device_id text NOT NULL,
    reason text NOT NULL,
    key_sha256 text NOT NULL,
    via text NOT NULL,
    at bigint NOT NULL
);

CREATE SEQUENCE device_refusals_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE device_refusals_id_seq OWNED BY device_refusals.id;

CREATE TABLE device_tags (
    device_id text NOT NULL,
    tag text NOT NULL
);

CREATE TABLE devices (
    id text NOT NULL,
    serial text NOT NULL,
    model text NOT NULL,
    status text NOT NULL,
    cert_serial text NOT NULL,
    cert_not_after bigint NOT NULL,
    cert_pem text NOT NULL,
    enrolled_at bigint NOT NULL,
    installed_version text DEFAULT ''::text NOT NULL,
    installed_target text DEFAULT ''::text NOT NULL,
    installed_counter bigint DEFAULT 0 NOT NULL,
    last_attestation_at bigint DEFAULT 0 NOT NULL,
    last_sequence bigint DEFAULT 0 NOT NULL,
    key_sha256 text DEFAULT ''::text NOT NULL,
    reprovision_at bigint DEFAULT 0 NOT NULL,
    reprovision_by text DEFAULT ''::text NOT NULL,
    revoked_at bigint DEFAULT 0 NOT NULL,
    revoke_reason text DEFAULT ''::text NOT NULL,
    replaced_cert_serial text DEFAULT ''::text NOT NULL,
    hardware_id text DEFAULT ''::text NOT NULL
);

CREATE TABLE group_serials (
    group_name text NOT NULL,
    serial text NOT NULL
);

CREATE TABLE models (
    name text NOT NULL,
    hardware_ids text NOT NULL,
    created_at bigint NOT NULL,
    cert_validity bigint DEFAULT 0 NOT NULL
);

CREATE TABLE releases (
    id bigint NOT NULL,
    model text NOT NULL,
    version text NOT NULL,
    counter bigint NOT NULL,
    target_path text NOT NULL,
    sha256 text NOT NULL,
    length bigint NOT NULL,
    created_by text NOT NULL,
    created_at bigint NOT NULL
);

CREATE SEQUENCE releases_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE releases_id_seq OWNED BY releases.id;

CREATE TABLE rollouts (
    id text NOT NULL,
    model text NOT NULL,
    version text NOT NULL,
    target_path text NOT NULL,
    groups_key text NOT NULL,
    group_list text NOT NULL,
    waves text NOT NULL,
    wave integer NOT NULL,
    wave_interval bigint NOT NULL,
    max_failure_rate double precision NOT NULL,
    min_sample bigint NOT NULL,
    silence_deadline bigint NOT NULL,
    seed text NOT NULL,
    state text NOT NULL,
    revision bigint NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    wave_starts text NOT NULL,
    halt_reason text NOT NULL,
    halt_indices text NOT NULL,
    created_by text NOT NULL,
    updated_by text NOT NULL
);

CREATE TABLE stations (
    name text NOT NULL,
    status text NOT NULL,
    quota bigint NOT NULL,
    used bigint DEFAULT 0 NOT NULL,
    not_before bigint NOT NULL,
    not_after bigint NOT NULL,
    models text NOT NULL,
    serial_pattern text NOT NULL,
    cert_serial text NOT NULL,
    created_by text NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint DEFAULT 0 NOT NULL,
    revoked_by text DEFAULT ''::text NOT NULL
);

CREATE TABLE tokens (
    hash text NOT NULL,
    serial text NOT NULL,
    model text NOT NULL,
    expires_at bigint NOT NULL,
    created_by text NOT NULL,
    created_at bigint NOT NULL,
    used_at bigint DEFAULT 0 NOT NULL
);

CREATE TABLE tuf_state (
    id integer NOT NULL,
    timestamp_version bigint NOT NULL,
    timestamp_etag text NOT NULL,
    CONSTRAINT tuf_state_id_check CHECK ((id = 1))
);

CREATE TABLE used_token_ids (
    issuer text NOT NULL,
    jti text NOT NULL,
    expires_at bigint NOT NULL,
    used_at bigint NOT NULL
);

ALTER TABLE ONLY attestations ALTER COLUMN id SET DEFAULT nextval('attestations_id_seq'::regclass);

ALTER TABLE ONLY audit_events ALTER COLUMN id SET DEFAULT nextval('audit_events_id_seq'::regclass);

ALTER TABLE ONLY device_refusals ALTER COLUMN id SET DEFAULT nextval('device_refusals_id_seq'::regclass);

ALTER TABLE ONLY releases ALTER COLUMN id SET DEFAULT nextval('releases_id_seq'::regclass);

ALTER TABLE ONLY attestations
    ADD CONSTRAINT attestations_device_id_sequence_key UNIQUE (device_id, sequence);

ALTER TABLE ONLY attestations
    ADD CONSTRAINT attestations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY audit_events
    ADD CONSTRAINT audit_events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY certificates
    ADD CONSTRAINT certificates_pkey PRIMARY KEY (serial);

ALTER TABLE ONLY crl
    ADD CONSTRAINT crl_pkey PRIMARY KEY (id);

ALTER TABLE ONLY device_groups
    ADD CONSTRAINT device_groups_pkey PRIMARY KEY (name);

ALTER TABLE ONLY device_refusals
    ADD CONSTRAINT device_refusals_pkey PRIMARY KEY (id);

ALTER TABLE ONLY device_tags
    ADD CONSTRAINT device_tags_pkey PRIMARY KEY (device_id, tag);

ALTER TABLE ONLY devices
    ADD CONSTRAINT devices_pkey PRIMARY KEY (id);

ALTER TABLE ONLY group_serials
    ADD CONSTRAINT group_serials_pkey PRIMARY KEY (group_name, serial);

ALTER TABLE ONLY models
    ADD CONSTRAINT models_pkey PRIMARY KEY (name);

ALTER TABLE ONLY releases
    ADD CONSTRAINT releases_model_counter_key UNIQUE (model, counter);

ALTER TABLE ONLY releases
    ADD CONSTRAINT releases_model_version_key UNIQUE (model, version);

ALTER TABLE ONLY releases
    ADD CONSTRAINT releases_pkey PRIMARY KEY (id);

ALTER TABLE ONLY releases
    ADD CONSTRAINT releases_target_path_key UNIQUE (target_path);

ALTER TABLE ONLY rollouts
    ADD CONSTRAINT rollouts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY stations
    ADD CONSTRAINT stations_pkey PRIMARY KEY (name);

ALTER TABLE ONLY tokens
    ADD CONSTRAINT tokens_pkey PRIMARY KEY (hash);

ALTER TABLE ONLY tuf_state
    ADD CONSTRAINT tuf_state_pkey PRIMARY KEY (id);

ALTER TABLE ONLY used_token_ids
    ADD CONSTRAINT used_token_ids_pkey PRIMARY KEY (issuer, jti);

CREATE INDEX attestations_outcome ON attestations USING btree (outcome, device_id, counter);

CREATE INDEX attestations_target ON attestations USING btree (target_path, received_at);

CREATE INDEX certificates_revoked ON certificates USING btree (revoked_at);

CREATE INDEX certificates_subject ON certificates USING btree (subject);

CREATE INDEX device_groups_tag ON device_groups USING btree (tag);

CREATE INDEX device_refusals_device ON device_refusals USING btree (device_id);

CREATE INDEX device_tags_tag ON device_tags USING btree (tag, device_id);

CREATE INDEX devices_model_id ON devices USING btree (model, id);

CREATE INDEX devices_serial ON devices USING btree (serial);

CREATE INDEX group_serials_serial ON group_serials USING btree (serial);

CREATE UNIQUE INDEX rollouts_active_groups ON rollouts USING btree (model, groups_key) WHERE (state = ANY (ARRAY['running'::text, 'paused'::text]));

CREATE UNIQUE INDEX rollouts_active_target ON rollouts USING btree (target_path) WHERE (state = ANY (ARRAY['running'::text, 'paused'::text]));

CREATE INDEX rollouts_model ON rollouts USING btree (model, created_at);

ALTER TABLE ONLY attestations
    ADD CONSTRAINT attestations_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices(id);

ALTER TABLE ONLY device_tags
    ADD CONSTRAINT device_tags_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices(id);

ALTER TABLE ONLY devices
    ADD CONSTRAINT devices_model_fkey FOREIGN KEY (model) REFERENCES models(name);

ALTER TABLE ONLY group_serials
    ADD CONSTRAINT group_serials_group_name_fkey FOREIGN KEY (group_name) REFERENCES device_groups(name);

ALTER TABLE ONLY releases
    ADD CONSTRAINT releases_model_fkey FOREIGN KEY (model) REFERENCES models(name);

ALTER TABLE ONLY rollouts
    ADD CONSTRAINT rollouts_model_fkey FOREIGN KEY (model) REFERENCES models(name);

ALTER TABLE ONLY tokens
    ADD CONSTRAINT tokens_model_fkey FOREIGN KEY (model) REFERENCES models(name);

