// Package compose holds deploy/compose/compose.yaml and the test that
// checks it; no container runs in Foster's tests (no Docker daemon).
package compose

import (
	"bytes"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The subset of the Compose specification compose.yaml uses. Decoding is
// strict: a key this struct does not know (a typo such as "healtcheck" or
// "depends-on", which docker compose would reject or ignore) fails.
type composeFile struct {
	Name     string             `yaml:"name"`
	Services map[string]service `yaml:"services"`
	Volumes  map[string]*volume `yaml:"volumes"`
}

type volume struct{}

type service struct {
	Image       string               `yaml:"image"`
	Build       *build               `yaml:"build"`
	Entrypoint  []string             `yaml:"entrypoint"`
	Command     []string             `yaml:"command"`
	User        string               `yaml:"user"`
	Environment map[string]string    `yaml:"environment"`
	Volumes     []string             `yaml:"volumes"`
	Ports       []string             `yaml:"ports"`
	Healthcheck *healthcheck         `yaml:"healthcheck"`
	DependsOn   map[string]dependsOn `yaml:"depends_on"`
	ReadOnly    bool                 `yaml:"read_only"`
	Tmpfs       []string             `yaml:"tmpfs"`
	CapDrop     []string             `yaml:"cap_drop"`
	SecurityOpt []string             `yaml:"security_opt"`
	Restart     string               `yaml:"restart"`
}

type build struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

type healthcheck struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	StartPeriod string   `yaml:"start_period"`
	Retries     int      `yaml:"retries"`
}

type dependsOn struct {
	Condition string `yaml:"condition"`
}

func load(t *testing.T) (composeFile, []byte) {
	t.Helper()
	b, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c, b
}

// interpolate resolves ${VAR:-default} the way docker compose does with
// nothing set, so the test sees the values a first `docker compose up` uses.
var varRE = regexp.MustCompile(`\$\{([A-Z0-9_]+)(?::-([^}]*))?\}`)

func interpolate(s string) string {
	return varRE.ReplaceAllString(s, "$2")
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return interpolate(args[i+1])
		}
	}
	return ""
}

func TestComposeFile(t *testing.T) {
	c, raw := load(t)
	want := []string{"fosterd-1", "fosterd-2", "postgres", "s3", "s3-bucket"}
	var got []string
	for name := range c.Services {
		got = append(got, name)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}

	for name, s := range c.Services {
		if s.Image == "" {
			t.Errorf("%s: no image", name)
		}
		for dep, d := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("%s depends on %s, which is not a service", name, dep)
			}
			if !slices.Contains([]string{"service_started", "service_healthy", "service_completed_successfully"}, d.Condition) {
				t.Errorf("%s depends on %s with condition %q", name, dep, d.Condition)
			}
			if d.Condition == "service_healthy" && c.Services[dep].Healthcheck == nil {
				t.Errorf("%s waits for %s to be healthy, but %s has no health check", name, dep, dep)
			}
		}
		for _, v := range s.Volumes {
			src, _, ok := strings.Cut(v, ":")
			if !ok {
				t.Errorf("%s: volume %q has no target", name, v)
				continue
			}
			if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
				if _, declared := c.Volumes[src]; !declared {
					t.Errorf("%s mounts volume %q, which is not declared under volumes:", name, src)
				}
			}
		}
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %q on every interface; bind 127.0.0.1", name, p)
			}
		}
		if h := s.Healthcheck; h != nil && (len(h.Test) < 2 || h.Test[0] != "CMD" || h.Interval == "" || h.Retries == 0) {
			t.Errorf("%s: health check %+v, want exec form [CMD ...] with interval and retries", name, h)
		}
	}

	pg, s3 := c.Services["postgres"], c.Services["s3"]
	for _, name := range []string{"fosterd-1", "fosterd-2"} {
		s := c.Services[name]
		t.Run(name, func(t *testing.T) {
			// Ready means /readyz (store and bucket), asked by fosterd itself: no shell in the image.
			h := s.Healthcheck
			if h == nil || !slices.Equal(h.Test[:2], []string{"CMD", "/usr/local/bin/fosterd"}) || !slices.Contains(h.Test, "--probe") {
				t.Errorf("health check %+v, want [CMD /usr/local/bin/fosterd ... --probe] (GET /readyz)", h)
			}
			if flagValue(h.Test, "--data-dir") != flagValue(s.Command, "--data-dir") || flagValue(h.Test, "--listen") != flagValue(s.Command, "--listen") {
				t.Errorf("health check probes %q at %q, fosterd serves %q at %q", flagValue(h.Test, "--data-dir"), flagValue(h.Test, "--listen"),
					flagValue(s.Command, "--data-dir"), flagValue(s.Command, "--listen"))
			}
			if u := interpolate(s.User); u == "" || strings.HasPrefix(u, "0:") || u == "root" {
				t.Errorf("user %q: fosterd must not run as root", s.User)
			}
			if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
				t.Errorf("want read_only, cap_drop ALL and no-new-privileges")
			}
			if !slices.Contains(s.Volumes, "./foster-data:"+flagValue(s.Command, "--data-dir")) {
				t.Errorf("volumes %v: the data dir %s is not ./foster-data", s.Volumes, flagValue(s.Command, "--data-dir"))
			}

			// The store URL names the postgres service with its user, password and database.
			db, err := url.Parse(flagValue(s.Command, "--db"))
			if err != nil {
				t.Fatalf("--db: %v", err)
			}
			pw, _ := db.User.Password()
			if db.Scheme != "postgres" || db.Hostname() != "postgres" || db.Port() != "5432" || db.User.Username() != pg.Environment["POSTGRES_USER"] ||
				pw != interpolate(pg.Environment["POSTGRES_PASSWORD"]) || db.Path != "/"+pg.Environment["POSTGRES_DB"] {
				t.Errorf("--db %s does not match the postgres service %v", db.Redacted(), pg.Environment)
			}
			// The bucket URL names the s3 service and its port, with its credentials.
			blobs, err := url.Parse(flagValue(s.Command, "--blobs"))
			if err != nil {
				t.Fatalf("--blobs: %v", err)
			}
			ep, err := url.Parse(blobs.Query().Get("endpoint"))
			if err != nil || blobs.Scheme != "s3" || ep.Hostname() != "s3" || ":"+ep.Port() != flagValue(s3.Command, "--port") {
				t.Errorf("--blobs %s: endpoint is not the s3 service on %s", blobs, flagValue(s3.Command, "--port"))
			}
			if !strings.Contains(c.Services["s3-bucket"].Command[0], "s3://"+blobs.Host) {
				t.Errorf("s3-bucket does not create bucket %q", blobs.Host)
			}
			if s.Environment["AWS_ACCESS_KEY_ID"] != s3.Environment["ROOT_ACCESS_KEY"] || s.Environment["AWS_SECRET_ACCESS_KEY"] != s3.Environment["ROOT_SECRET_KEY"] {
				t.Errorf("fosterd's S3 credentials differ from the s3 service's")
			}
		})
	}
	// Only one replica may initialise the instance, and the other waits for it.
	if !slices.Contains(c.Services["fosterd-1"].Command, "--init") || slices.Contains(c.Services["fosterd-2"].Command, "--init") {
		t.Errorf("want --init on fosterd-1 only")
	}
	if c.Services["fosterd-2"].DependsOn["fosterd-1"].Condition != "service_healthy" {
		t.Errorf("fosterd-2 must wait for fosterd-1 to be healthy (it initialises the shared instance)")
	}

	// Every variable compose.yaml reads is documented in README.md.
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range varRE.FindAllStringSubmatch(string(raw), -1) {
		if !strings.Contains(string(readme), "`"+m[1]+"`") {
			t.Errorf("compose.yaml reads ${%s}, which README.md does not document", m[1])
		}
	}
}

// A typo in a key fails the strict decoding instead of being ignored.
func TestComposeStrictDecodingCatchesTypos(t *testing.T) {
	_, raw := load(t)
	bad := bytes.Replace(raw, []byte("    healthcheck:\n      test: [\"CMD\", \"pg_isready\""), []byte("    healtcheck:\n      test: [\"CMD\", \"pg_isready\""), 1)
	if bytes.Equal(bad, raw) {
		t.Fatal("test setup: postgres health check not found")
	}
	dec := yaml.NewDecoder(bytes.NewReader(bad))
	dec.KnownFields(true)
	var c composeFile
	if err := dec.Decode(&c); err == nil || !strings.Contains(err.Error(), "healtcheck") {
		t.Fatalf("decoding a compose file with \"healtcheck\": %v, want an error naming it", err)
	}
}
