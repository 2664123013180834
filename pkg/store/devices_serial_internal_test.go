package store

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeviceLookupBySerialDoesNotScanTheFleet: resolving `device show
// SERIAL` used to read every device of the fleet; it is an index lookup.
func TestDeviceLookupBySerialDoesNotScanTheFleet(t *testing.T) {
	ctx := context.Background()
	d, err := Open(ctx, "sqlite:"+filepath.Join(t.TempDir(), "foster.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rows, err := d.db.QueryContext(ctx, `EXPLAIN QUERY PLAN `+devicesBySerialQuery, "SN-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if p := strings.Join(plan, "; "); !strings.Contains(p, "USING INDEX devices_serial") {
		t.Fatalf("lookup by serial does not use the devices_serial index: %s", p)
	}
}
