package e2e

import (
	"bufio"
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// What the fleet simulator (fleetsim_test.go) measures, and the load
// balancer it puts in front of the replicas.

// balancer is the load balancer in front of the fosterd replicas: a TCP
// proxy that spreads connections round-robin and skips a replica that
// refuses the connection (a cloud load balancer's health check does the
// same, a little later). TLS passes through untouched: every device does
// its handshake, with its own certificate, with fosterd.
type balancer struct {
	ln       net.Listener
	backends []string
	next     atomic.Uint64
	// rerouted counts connections a refusing replica sent to another one.
	rerouted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func startBalancer(t *testing.T, backends []string) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	b.wg.Go(b.serve)
	t.Cleanup(b.close)
	return b
}

func (b *balancer) URL() string { return "https://" + b.ln.Addr().String() }

func (b *balancer) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Go(func() { b.proxy(c) })
	}
}

func (b *balancer) track(c net.Conn, open bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !open {
		delete(b.conns, c)
		return true
	}
	if b.conns == nil { // closed
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *balancer) proxy(c net.Conn) {
	defer c.Close()
	start := int(b.next.Add(1))
	var up net.Conn
	for i := range b.backends {
		var err error
		if up, err = net.DialTimeout("tcp", b.backends[(start+i)%len(b.backends)], 5*time.Second); err == nil {
			if i > 0 {
				b.rerouted.Add(1)
			}
			break
		}
	}
	if up == nil {
		return
	}
	defer up.Close()
	if !b.track(c, true) {
		return
	}
	b.track(up, true)
	defer b.track(c, false)
	defer b.track(up, false)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// One side ended (or a replica died): end both, as a proxy does.
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}

// open is how many device connections are open now.
func (b *balancer) open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns) / 2 // each is tracked with its upstream
}

func (b *balancer) close() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.conns = nil
	b.mu.Unlock()
	b.wg.Wait()
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procCPU is the CPU time (user + system) process pid used so far.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields 14 and 15 follow it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// selfCPU is the CPU time of this process: the simulated devices, the
// load balancer and the measuring.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// findProcess returns the pid of a process whose command line contains
// every one of parts (0 when there is none).
func findProcess(parts ...string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		cmd := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		all := true
		for _, p := range parts {
			all = all && strings.Contains(cmd, p)
		}
		if all {
			pid, _ := strconv.Atoi(filepath.Base(d))
			return pid
		}
	}
	return 0
}

// pgBackends follows the CPU time of the PostgreSQL backends serving one
// application_name (the replicas' connections). A backend that exits keeps
// the CPU time of its last sample, so the total undercounts by at most one
// sampling interval of each closed connection.
type pgBackends struct {
	db   *sql.DB
	app  string
	mu   sync.Mutex
	seen map[int]time.Duration
	stop chan struct{}
	wg   sync.WaitGroup
}

func followPGBackends(t *testing.T, db *sql.DB, app string) *pgBackends {
	p := &pgBackends{db: db, app: app, seen: map[int]time.Duration{}, stop: make(chan struct{})}
	p.wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
				p.sample()
			}
		}
	})
	t.Cleanup(func() { close(p.stop); p.wg.Wait() })
	return p
}

func (p *pgBackends) sample() {
	rows, err := p.db.Query(`SELECT pid FROM pg_stat_activity WHERE application_name = $1`, p.app)
	if err != nil {
		return
	}
	var pids []int
	for rows.Next() {
		var pid int
		if rows.Scan(&pid) == nil {
			pids = append(pids, pid)
		}
	}
	rows.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pid := range pids {
		if cpu, err := procCPU(pid); err == nil && cpu >= p.seen[pid] {
			p.seen[pid] = cpu
		}
	}
}

// total samples now and returns the CPU time of every backend seen so far.
func (p *pgBackends) total() time.Duration {
	p.sample()
	p.mu.Lock()
	defer p.mu.Unlock()
	var sum time.Duration
	for _, cpu := range p.seen {
		sum += cpu
	}
	return sum
}

func (p *pgBackends) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seen)
}

// latencies records how long operations took, by operation.
type latencies struct {
	mu  sync.Mutex
	ops map[string][]time.Duration
}

func (l *latencies) add(op string, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ops == nil {
		l.ops = map[string][]time.Duration{}
	}
	l.ops[op] = append(l.ops[op], d)
}

// quantiles returns the count, p50, p99 and maximum of op.
func (l *latencies) quantiles(op string) (n int, p50, p99, max time.Duration) {
	l.mu.Lock()
	d := slices.Clone(l.ops[op])
	l.mu.Unlock()
	if len(d) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	return len(d), at(0.50), at(0.99), d[len(d)-1]
}

var requestsLine = regexp.MustCompile(`^foster_http_requests_total\{(.*)\} (\S+)$`)
var labelValue = regexp.MustCompile(`(\w+)="([^"]*)"`)

// requestCounts reads a replica's request counters (Prometheus, as an
// admin) by "route code".
func (e *Env) requestCounts(admin *http.Client) (map[string]float64, error) {
	resp, err := admin.Get(e.URL + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %s", e.URL, resp.Status)
	}
	requests := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := requestsLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		labels := map[string]string{}
		for _, kv := range labelValue.FindAllStringSubmatch(m[1], -1) {
			labels[kv[1]] = kv[2]
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		requests[labels["route"]+" "+labels["code"]] += v
	}
	return requests, sc.Err()
}
