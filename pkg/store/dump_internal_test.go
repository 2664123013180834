package store

import (
	"bytes"
	"math"
	"reflect"
	"testing"
)

// TestDumpValuesSurviveTheRoundTrip: every kind of value a store returns is
// encoded and decoded to itself, including what JSON cannot carry as is
// (bytes, text that is not UTF-8, int64 extremes that floats would round).
func TestDumpValuesSurviveTheRoundTrip(t *testing.T) {
	vals := []any{nil, int64(0), int64(math.MaxInt64), int64(math.MinInt64), true, false, 1.5,
		"", "plain", "<&>\"\\\n\t é 😀", "not utf-8 \xff\xfe", []byte{}, []byte{0, 1, 0xff}}
	cols := make([]string, len(vals))
	row, err := appendRow(nil, vals, cols)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.ContainsRune(row, '\n') {
		t.Fatalf("a row must be one line: %s", row)
	}
	got, err := decodeRow(row, len(vals))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, vals) {
		t.Fatalf("round trip:\n got %#v\nwant %#v", got, vals)
	}
}

// FuzzDecodeRow: rows read from an archive never panic the decoder, and
// what it accepts encodes and decodes to the same values.
func FuzzDecodeRow(f *testing.F) {
	f.Add([]byte(`[null,1,"a",true,{"bytes":"AAE="},{"text":"/w=="},{"float":"1.5"}]`), 7)
	f.Add([]byte(`["a"]`), 1)
	f.Add([]byte(`[{"bytes":1}]`), 1)
	f.Add([]byte(`[99999999999999999999]`), 1)
	f.Fuzz(func(t *testing.T, row []byte, n int) {
		if n < 0 || n > 64 {
			return
		}
		vals, err := decodeRow(row, n)
		if err != nil {
			return
		}
		again, err := appendRow(nil, vals, make([]string, n))
		if err != nil {
			t.Fatalf("re-encoding %#v: %v", vals, err)
		}
		back, err := decodeRow(again, n)
		if err != nil || !reflect.DeepEqual(back, vals) {
			t.Fatalf("%s -> %#v -> %s -> %#v (%v)", row, vals, again, back, err)
		}
	})
}
