package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/pkg/store"
)

// TestReleaseListWalksEveryPage: fosterd answers at most store.MaxReleasePage
// releases per request; foster release list prints all of them, in the
// server's order, as if there were one page.
func TestReleaseListWalksEveryPage(t *testing.T) {
	const n = 2*store.MaxReleasePage + 17
	var all []server.Release
	for i := range n {
		// ids deliberately not in listing order: the cursor is the last id, not an offset
		all = append(all, server.Release{Release: store.Release{ID: int64(n - i), Model: "edge-gw", Version: fmt.Sprintf("1.0.%d", n-i), Counter: int64(n - i), SHA256: "ab"}, Status: "published"})
	}
	requests := 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests++
		q := r.URL.Query()
		limit, err := strconv.Atoi(q.Get("limit"))
		if err != nil || limit < 1 || limit > store.MaxReleasePage || q.Get("model") != "edge-gw" {
			http.Error(w, `{"error":"bad page","code":"bad_request"}`, http.StatusBadRequest)
			return
		}
		start := 0
		if a := q.Get("after"); a != "" {
			id, _ := strconv.ParseInt(a, 10, 64)
			start = slices.IndexFunc(all, func(r server.Release) bool { return r.ID == id }) + 1
		}
		json.NewEncoder(w).Encode(all[start:min(start+limit, len(all))])
	}))
	defer srv.Close()
	base, _ := url.Parse(srv.URL)
	c := &client{base: base, http: srv.Client()}

	var out bytes.Buffer
	if err := cmdReleaseList(context.Background(), c, []string{"--model", "edge-gw", "--json"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var got []server.Release
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != n || got[0].Version != all[0].Version || got[n-1].Version != all[n-1].Version || requests != 3 {
		t.Fatalf("%d releases (first %s, last %s) in %d requests, want %d in 3", len(got), got[0].Version, got[n-1].Version, requests, n)
	}

	out.Reset()
	if err := cmdReleaseList(context.Background(), c, []string{"--model", "edge-gw"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(out.String(), "\n"); lines != n+1 {
		t.Fatalf("table has %d lines, want header + %d", lines, n)
	}
}
