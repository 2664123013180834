package store

// OnUnprepared makes d report every query its hot paths run without a
// statement prepared at Open.
func OnUnprepared(d *DB, f func(query string)) { d.unprepared = f }
