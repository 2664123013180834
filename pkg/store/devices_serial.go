package store

import (
	"context"
	"fmt"
)

// maxSerialMatches bounds DevicesBySerial: a serial names one device per
// model, and a lookup only needs to know whether it is ambiguous.
const maxSerialMatches = 16

// migrateDeviceSerial indexes devices by serial, so an admin's lookup by
// serial reads the matching rows, not the whole fleet.
func (d *DB) migrateDeviceSerial(ctx context.Context) error {
	if _, err := d.db.ExecContext(ctx, `CREATE INDEX IF NOT EXISTS devices_serial ON devices (serial)`); err != nil {
		return fmt.Errorf("migrating devices (serial index): %w", err)
	}
	return nil
}

// DevicesBySerial returns the devices (one per model, at most 16) whose
// serial is serial, ordered by id, through the devices_serial index.
func (d *DB) DevicesBySerial(ctx context.Context, serial string) ([]Device, error) {
	return d.queryDevices(ctx, d.q(devicesBySerialQuery), serial)
}

var devicesBySerialQuery = `SELECT ` + deviceCols + ` FROM devices WHERE serial = ? ORDER BY id LIMIT ` + fmt.Sprint(maxSerialMatches)
