package store

import "database/sql"

// OnUnprepared makes d report every query its hot paths run without a
// statement prepared at Open.
func OnUnprepared(d *DB, f func(query string)) { d.unprepared = f }

// PoolStats are the connection pool's statistics.
func PoolStats(d *DB) sql.DBStats { return d.db.Stats() }
