package server

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A streamed answer cut short on purpose (an offline bundle whose export
// failed after the 200 went out) must drop the connection: a client must
// never receive a clean end of body, or a JSON error appended to the tar,
// and mistake it for a complete bundle. Any other panic is still a JSON 500
// and the server keeps serving.
func TestCutStreamDropsTheConnectionAndOtherPanicsAreJSON(t *testing.T) {
	e := &edge{log: slog.New(slog.DiscardHandler)}
	mux := http.NewServeMux()
	mux.Handle("GET /cut", e.handle(nil, func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/x-tar")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, strings.Repeat("partial bundle ", 1000))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	mux.Handle("GET /bug", e.handle(nil, func(w http.ResponseWriter, r *http.Request) error {
		panic("a handler bug, not a cut stream")
	}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/cut")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("reading a cut stream: err %v after %d bytes; want an unexpected EOF, not a clean end", err, len(body))
	}
	if strings.Contains(string(body), `"error"`) {
		t.Fatalf("a JSON error was appended to the cut stream")
	}

	resp, err = http.Get(srv.URL + "/bug")
	if err != nil {
		t.Fatalf("the server stopped serving after a panic: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(b), `"error"`) {
		t.Fatalf("a handler bug answered %d %s, want a JSON 500", resp.StatusCode, b)
	}
}
