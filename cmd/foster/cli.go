package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/buildinfo"
	"github.com/foster-ota/foster/pkg/env"
)

var errUsage = errors.New("usage error")

const usage = `foster - Foster admin CLI (mTLS, no passwords)

Usage:
  foster --version
  foster init --dir DIR [--listen ADDR]            create a development instance (as fosterd --init does)
  foster init --production --offline-dir OFFLINE --dir DIR   offline keys only on OFFLINE (docs/OPERATIONS.md)
  foster ca certify-intermediate --dir DIR --key URI [--out FILE]   offline: certify a new issuing key (docs/CA.md)
  foster [connection] ca use-intermediate --cert FILE --key URI      issue with it on every fosterd, no restart
  foster [connection] model add NAME [--hardware-id ID ...] [--cert-validity 720h]
  foster [connection] model list|show [NAME] [--json]
  foster [connection] model update NAME [--add-hardware-id ID ...] [--remove-hardware-id ID ...]
  foster [connection] token create --serial SN --model M [--ttl 24h]
  foster [connection] release add --model M --version V [--hold] [--counter N] FILE
  foster [connection] release list [--model M] [--json]
  foster [connection] release show|revoke --model M --version V [--json]
  foster [connection] tuf status|stage|inspect|publish ...   foster tuf keygen|sign|combine ...  (offline ceremonies: foster tuf --help)
  foster [connection] tuf rotate timestamp|snapshot|targets [--key KEY] [--root-key FILE ...]   new online key, every fosterd, no restart
  foster [connection] keys status [--json]        the online keys and which fosterd use them
  foster [connection] device list [--json]
  foster [connection] device show SERIAL|URN [--json]
  foster [connection] device revoke SERIAL|URN [--reason keyCompromise]
  foster [connection] device reprovision SERIAL|URN
  foster [connection] device tag|untag SERIAL|URN TAG...
  foster [connection] group create NAME --tag T | --serials FILE
  foster [connection] group list|show|delete [NAME] [--json]
  foster [connection] rollout create --model M --version V [--group G ...] [--waves 1,10,50,100]
                      [--wave-interval 6h] [--max-failure-rate 0.05] [--min-sample 20] [--silence-deadline 24h] [--supersede]
  foster [connection] rollout list [--model M] [--active] [--json]
  foster [connection] rollout show|promote|pause|resume|abort ID [--json]
  foster [connection] station create NAME --quota N --models M,...|'*' [--valid-for 720h] [--serial-pattern RE] --out NAME.station
  foster [connection] station list [--json]
  foster [connection] station revoke NAME
  foster [connection] admin create NAME --role admin|auditor --out NAME.cred
  foster [connection] admin list [--json]
  foster [connection] admin revoke NAME [--reason keyCompromise]
  foster [connection] admin renew                 a fresh credential for the caller, written over its files
  foster [connection] nudge --model M [--serial SN]   devices check for updates now (MQTT; docs/ROLLOUTS.md)
  foster [connection] bundle export --model M [--version V] [--hardware-id H] [--lifetime 720h] --out FILE
                      one file that patches a device that can never reach fosterd (docs/OFFLINE.md)
  foster --station FILE token create --serial SN --model M [--ttl 24h]   offline: no server contact
  foster --station FILE enroll --csr dev.csr --out dev.crt                submit a device CSR over mTLS
  foster blobs copy --from file:DIR/blobs --to 's3://bucket?...'   offline: copy an instance's metadata and firmware
  foster blobs migrate --instance DIR --to 's3://bucket?...'        offline: move them and point config.json there
  foster backup --instance DIR --out FILE.tar.gz   an archive of a running instance (store, blobs, keys: secret)
  foster restore --from FILE --dir NEWDIR [--db DSN] [--blobs URL]   into a new directory and empty stores
  foster audit verify BUNDLE|DIR... --ca-root ca.pem --tuf-root root.json --log-key log.pub   offline
  foster [connection] audit report [--model M] [--format table|json|csv] [--stale-days N]
  foster [connection] audit monitor --state FILE [--log-key log.pub]   (needs only --server URL --ca FILE)
  foster [connection] console [--listen 127.0.0.1:8080]   the fleet console in your browser (docs/CONSOLE.md)

Connection (one of):
  --instance DIR                       use DIR's server URL, admin certificate and CA root
  --cred FILE                          an admin or auditor credential bundle (foster admin create)
  --station FILE                       a factory station credential bundle (foster station create)
  --server URL --cert FILE --key FILE --ca FILE

  foster help [COMMAND [SUBCOMMAND]]             help on stdout; "foster GROUP --help" lists a group's commands
  foster completion bash|zsh|fish                  shell completion (bash: source <(foster completion bash))

Output: every command that prints a result takes --json and then prints it as JSON on stdout, with the
HTTP API's field names (docs/CONTRACTS.md, "CLI output"); errors go to stderr.

Run "foster COMMAND --help" for a command's flags.
`

// conn are the global connection flags.
type conn struct {
	instance, server, cert, key, ca string
	cred, station                   string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c conn
	var version bool
	fs := flag.NewFlagSet("foster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&version, "version", false, "print the version, VCS commit and Go version, and exit")
	fs.StringVar(&c.instance, "instance", "", "instance data directory (reads config.json, admin.crt, admin.key, ca.pem)")
	fs.StringVar(&c.server, "server", "", "fosterd URL, e.g. https://127.0.0.1:8443")
	fs.StringVar(&c.cert, "cert", "", "client certificate (PEM chain)")
	fs.StringVar(&c.key, "key", "", "client private key (PEM)")
	fs.StringVar(&c.ca, "ca", "", "Foster CA root (PEM) to verify the server")
	fs.StringVar(&c.cred, "cred", "", "admin or auditor credential bundle (written by foster admin create)")
	fs.StringVar(&c.station, "station", "", "factory station credential bundle (written by foster station create)")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage+"\nGlobal flags:\n")
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\n"+env.Help())
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if version {
		fmt.Fprintln(stdout, buildinfo.Read("foster"))
		return nil
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return errUsage
	}
	cmd, rest := rest[0], rest[1:]
	switch cmd {
	case "help":
		return cmdHelp(ctx, rest, stdout, stderr)
	case "completion":
		if len(rest) != 1 || isHelp(rest) {
			fmt.Fprint(stderr, "Usage: foster completion bash|zsh|fish\n\n  bash: source <(foster completion bash)\n  zsh:  source <(foster completion zsh)\n  fish: foster completion fish | source\n")
			if isHelp(rest) {
				return nil
			}
			return errUsage
		}
		return completionScript(stdout, rest[0])
	}
	top, ok := findCommand(cmd)
	if !ok {
		return unknownCommand(stderr, "", cmd, topNames())
	}
	if len(top.subs) > 0 && cmd != "tuf" { // tuf --help prints its ceremony guide
		switch {
		case len(rest) == 0 || isHelp(rest[:1]):
			printGroupHelp(stdout, top)
			return nil
		case !strings.HasPrefix(rest[0], "-") && !top.hasSub(rest[0]):
			return unknownCommand(stderr, cmd, rest[0], subNames(top))
		}
	}
	switch cmd {
	case "blobs":
		if rest[0] == "migrate" {
			return cmdBlobsMigrate(ctx, c, rest[1:], stdout, stderr) // offline: the instance's files and stores
		}
		return cmdBlobsCopy(ctx, rest[1:], stdout, stderr) // offline: store to store
	case "migrate-blobs":
		return cmdBlobsMigrate(ctx, c, rest, stdout, stderr)
	case "backup":
		return cmdBackup(ctx, c, rest, stdout, stderr) // reads the store and blobs directly
	case "restore":
		return cmdRestore(ctx, rest, stdout, stderr)
	}
	if cmd == "ca" {
		return runCA(ctx, c, rest, stdout, stderr) // certify-intermediate is offline, where the root key is
	}
	if cmd == "init" {
		return cmdInit(ctx, rest, stdout, stderr)
	}
	if cmd == "tuf" {
		return runTUF(ctx, c, rest, stdout, stderr) // sign, combine and keygen are offline
	}
	if cmd == "token" && c.station != "" && len(rest) > 0 && rest[0] == "create" {
		// Offline: a station mints tokens with its own key, no server needed.
		cred, err := loadBundle(c.station)
		if err != nil {
			return err
		}
		return cmdStationToken(cred, rest[1:], stdout, stderr)
	}
	if cmd == "console" {
		return cmdConsole(ctx, c, rest, stdout, stderr) // runs until interrupted
	}
	if cmd == "audit" {
		return runAudit(ctx, c, rest, stdout, stderr) // verify is offline, monitor needs no credential
	}
	if cmd == "enroll" || cmd == "nudge" {
		rest = append([]string{""}, rest...) // the commands without a subcommand
	}
	if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
		fmt.Fprintf(stderr, "foster %s: missing subcommand\n\n", cmd)
		fs.Usage()
		return errUsage
	}
	sub, rest := rest[0], rest[1:]
	var fn func(context.Context, *client, []string, io.Writer, io.Writer) error
	switch cmd + " " + sub {
	case "model add":
		fn = cmdModelAdd
	case "model list":
		fn = cmdModelList
	case "model show":
		fn = cmdModelShow
	case "model update":
		fn = cmdModelUpdate
	case "token create":
		fn = cmdTokenCreate
	case "release add":
		fn = cmdReleaseAdd
	case "release list":
		fn = cmdReleaseList
	case "release show":
		fn = cmdReleaseShow
	case "release revoke":
		fn = cmdReleaseRevoke
	case "device list":
		fn = cmdDeviceList
	case "device show":
		fn = cmdDeviceShow
	case "device revoke":
		fn = cmdDeviceRevoke
	case "device reprovision":
		fn = cmdDeviceReprovision
	case "device tag":
		fn = cmdDeviceTag(false)
	case "device untag":
		fn = cmdDeviceTag(true)
	case "group create":
		fn = cmdGroupCreate
	case "group list":
		fn = cmdGroupList
	case "group show":
		fn = cmdGroupShow
	case "group delete":
		fn = cmdGroupDelete
	case "rollout create":
		fn = cmdRolloutCreate
	case "rollout list":
		fn = cmdRolloutList
	case "rollout show":
		fn = cmdRolloutShow
	case "rollout promote":
		fn = cmdRolloutAction("promote", "promoted")
	case "rollout pause":
		fn = cmdRolloutAction("pause", "paused")
	case "rollout resume":
		fn = cmdRolloutAction("resume", "resumed")
	case "rollout abort":
		fn = cmdRolloutAction("abort", "aborted")
	case "station create":
		fn = cmdStationCreate
	case "station list":
		fn = cmdStationList
	case "station revoke":
		fn = cmdStationRevoke
	case "admin create":
		fn = cmdAdminCreate
	case "admin list":
		fn = cmdAdminList
	case "admin revoke":
		fn = cmdAdminRevoke
	case "admin renew":
		fn = cmdAdminRenew
	case "keys status":
		fn = cmdKeysStatus
	case "enroll ":
		fn = cmdStationEnroll
	case "nudge ":
		fn = cmdNudge
	case "bundle export":
		fn = cmdBundleExport
	default:
		return unknownCommand(stderr, cmd, sub, subNames(top))
	}
	// Parse the command's own flags (and --help) before connecting.
	cl, err := c.client()
	if err != nil {
		if isHelp(rest) {
			cl = nil
		} else {
			return err
		}
	}
	return fn(ctx, cl, rest, stdout, stderr)
}

// cmdHelp is `foster help [COMMAND [SUBCOMMAND]]`: help on stdout, exit 0.
func cmdHelp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelp(args[:1]) {
		fmt.Fprint(stdout, usage)
		fmt.Fprintln(stdout, "\nCommands:")
		for _, c := range commandTree {
			fmt.Fprintf(stdout, "  %-12s %s\n", c.name, c.summary)
		}
		fmt.Fprintln(stdout, "\nRun \"foster --help\" for the connection flags and environment variables.")
		return nil
	}
	c, ok := findCommand(args[0])
	if !ok {
		return unknownCommand(stderr, "", args[0], topNames())
	}
	if len(args) == 1 && len(c.subs) > 0 && c.name != "tuf" {
		printGroupHelp(stdout, c)
		return nil
	}
	if c.name == "help" {
		return cmdHelp(ctx, nil, stdout, stderr)
	}
	err := run(ctx, append(slices.Clone(args), "--help"), stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func isHelp(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			return true
		}
	}
	return false
}

// client is an mTLS API client.
type client struct {
	base  *url.URL
	http  *http.Client
	caPEM []byte
	// cred is the credential bundle in use (--cred or --station), if any,
	// read from credPath; certPath and keyPath are the certificate and key
	// files in use otherwise (admin renew rewrites them).
	cred                        *credential
	credPath, certPath, keyPath string
}

func (c conn) client() (*client, error) {
	if c.cred != "" && c.station != "" {
		return nil, fmt.Errorf("%w: give --cred or --station, not both", errUsage)
	}
	if path := c.cred + c.station; path != "" {
		return c.bundleClient(path)
	}
	if c.instance != "" {
		cfg, err := instance.Load(c.instance)
		if err != nil {
			return nil, err
		}
		p := instance.PathsOf(c.instance)
		if c.server == "" {
			c.server = cfg.ServerURL
		}
		if c.cert == "" {
			c.cert, c.key = p.AdminCert, p.AdminKey
		}
		if c.ca == "" {
			c.ca = p.CARoot
		}
	}
	if c.server == "" || c.cert == "" || c.key == "" || c.ca == "" {
		return nil, fmt.Errorf("%w: give --instance DIR, or --server, --cert, --key and --ca", errUsage)
	}
	u, err := url.Parse(c.server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want an https:// URL", c.server)
	}
	// Finish an `admin renew` a crash interrupted, so the pair matches.
	if err := atomicfile.RecoverPair(c.cert, c.key); err != nil {
		return nil, fmt.Errorf("recovering %s: %w", c.cert, err)
	}
	cert, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		return nil, fmt.Errorf("loading client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(c.ca)
	if err != nil {
		return nil, fmt.Errorf("reading CA root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", c.ca)
	}
	cl := newClient(u, cert, pool, caPEM)
	cl.certPath, cl.keyPath = c.cert, c.key
	return cl, nil
}

func newClient(u *url.URL, cert tls.Certificate, pool *x509.CertPool, caPEM []byte) *client {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &client{base: u, http: &http.Client{Transport: tr}, caPEM: caPEM}
}

// bundleClient connects with a credential bundle; --server and --ca override
// the bundle's.
func (c conn) bundleClient(path string) (*client, error) {
	cred, err := loadBundle(path)
	if err != nil {
		return nil, err
	}
	server := c.server
	if server == "" {
		server = cred.Server
	}
	caPEM := []byte(cred.CARoot)
	if c.ca != "" {
		if caPEM, err = os.ReadFile(c.ca); err != nil {
			return nil, fmt.Errorf("reading CA root: %w", err)
		}
	}
	if server == "" {
		return nil, errNoServer
	}
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server %q: want an https:// URL", server)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no CA root", path)
	}
	cl := newClient(u, cred.pair, pool, caPEM)
	cl.cred, cl.credPath = cred, path
	return cl, nil
}

// do sends a request and decodes a JSON response into out (if non-nil).
func (c *client) do(ctx context.Context, method, path string, body io.Reader, size int64, ctype string, out any) error {
	u := c.base.JoinPath(path)
	if i := strings.IndexByte(path, '?'); i >= 0 {
		u = c.base.JoinPath(path[:i])
		u.RawQuery = path[i+1:]
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	if body != nil {
		req.ContentLength = size
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("contacting %s: %w", c.base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return apierr.FromResponse(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("decoding response: %w", err)
	}
	return nil
}

func (c *client) postJSON(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, path, strings.NewReader(string(b)), int64(len(b)), "application/json", out)
}

func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: foster %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// usageError prints fs's usage and returns an errUsage error (exit 2).
func usageError(fs *flag.FlagSet, format string, args ...any) error {
	fs.Usage()
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// parse parses flags, allowing positional arguments before or between flags.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func table(w io.Writer, header string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func absPath(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}
