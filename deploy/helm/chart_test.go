// Package helm tests the foster Helm chart (deploy/helm/foster): helm lint,
// helm template with several sets of values, and every rendered manifest
// decoded strictly into the Kubernetes API types, so that a misspelled
// field fails here instead of being dropped by the API server.
//
// It is its own Go module so that helm and the Kubernetes libraries stay
// out of Foster's module: building helm cold takes minutes on the project's
// 2-core machines. Run it with `make deploy-test` (repository root); helm
// v4 is a tool of this module (go.mod: tool helm.sh/helm/v4/cmd/helm).
package helm

import (
	"bytes"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("go", append([]string{"tool", "helm"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

func TestChartLints(t *testing.T) {
	helm(t, "lint", "--strict", "./foster")
	helm(t, "lint", "--strict", "./foster", "--set", "serviceMonitor.enabled=true,metrics.enabled=false,replicaCount=3")
}

// rendered is one `helm template` output, decoded.
type rendered struct {
	deployment     *appsv1.Deployment
	service        *corev1.Service
	pdb            *policyv1.PodDisruptionBudget
	networkPolicy  *networkingv1.NetworkPolicy
	serviceAccount *corev1.ServiceAccount
	serviceMonitor *serviceMonitor
	docs           map[string][]byte // kind -> manifest
}

// serviceMonitor is the part of prometheus-operator's
// monitoring.coreos.com/v1 ServiceMonitor the chart writes (its Go types
// would pull in the operator); strict like the rest.
type serviceMonitor struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Metadata   map[string]any     `json:"metadata"`
	Spec       serviceMonitorSpec `json:"spec"`
}

type serviceMonitorSpec struct {
	Selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	} `json:"selector"`
	Endpoints []struct {
		Port     string `json:"port"`
		Path     string `json:"path"`
		Scheme   string `json:"scheme"`
		Interval string `json:"interval"`
	} `json:"endpoints"`
}

// decodeStrict decodes a manifest as the API server does with
// fieldValidation=Strict: YAML to JSON (duplicate keys refused), then
// case-sensitive JSON decoding that refuses unknown and duplicate fields.
// (encoding/json, under sigs.k8s.io/yaml.UnmarshalStrict, matches field
// names case-insensitively: "readOnlyRootFileSystem" would pass there.)
func decodeStrict(doc []byte, into any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, into)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func render(t *testing.T, set ...string) rendered {
	t.Helper()
	args := []string{"template", "rel", "./foster", "--namespace", "foster"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out := helm(t, args...)
	r := rendered{docs: map[string][]byte{}}
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		if len(bytes.TrimSpace(bytes.TrimPrefix(bytes.TrimSpace(doc), []byte("---")))) == 0 {
			continue
		}
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("rendered manifest is not YAML: %v\n%s", err, doc)
		}
		if _, dup := r.docs[meta.Kind]; dup {
			t.Fatalf("two %s manifests", meta.Kind)
		}
		r.docs[meta.Kind] = doc
		var into any
		switch meta.Kind {
		case "Deployment":
			r.deployment = &appsv1.Deployment{}
			into = r.deployment
		case "Service":
			r.service = &corev1.Service{}
			into = r.service
		case "PodDisruptionBudget":
			r.pdb = &policyv1.PodDisruptionBudget{}
			into = r.pdb
		case "NetworkPolicy":
			r.networkPolicy = &networkingv1.NetworkPolicy{}
			into = r.networkPolicy
		case "ServiceAccount":
			r.serviceAccount = &corev1.ServiceAccount{}
			into = r.serviceAccount
		case "ServiceMonitor":
			r.serviceMonitor = &serviceMonitor{}
			into = r.serviceMonitor
		default:
			t.Fatalf("unexpected kind %q rendered", meta.Kind)
		}
		if err := decodeStrict(doc, into); err != nil {
			t.Fatalf("%s does not decode strictly into its API type: %v\n%s", meta.Kind, err, doc)
		}
	}
	if r.deployment == nil || r.service == nil {
		t.Fatalf("no Deployment or Service rendered: %v", keys(r.docs))
	}
	return r
}

func keys(m map[string][]byte) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

func container(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	if len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(d.Spec.Template.Spec.Containers))
	}
	return d.Spec.Template.Spec.Containers[0]
}

func TestChartDefaults(t *testing.T) {
	r := render(t)
	d, c := r.deployment, container(t, r.deployment)
	if *d.Spec.Replicas != 2 {
		t.Errorf("replicas %d, want 2", *d.Spec.Replicas)
	}
	podLabels := d.Spec.Template.Labels
	for k, v := range d.Spec.Selector.MatchLabels {
		if podLabels[k] != v {
			t.Errorf("Deployment selector %s=%s does not select its pods %v", k, v, podLabels)
		}
	}

	// Probes: liveness /healthz, readiness /readyz, over HTTPS on the named port.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for name, want := range map[string]struct {
		probe *corev1.Probe
		path  string
	}{
		"liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}, "startup": {c.StartupProbe, "/healthz"},
	} {
		p := want.probe
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want.path || p.HTTPGet.Scheme != corev1.URISchemeHTTPS || ports[p.HTTPGet.Port.String()] != 8443 {
			t.Errorf("%s probe %+v, want GET %s over HTTPS on port https (8443)", name, p, want.path)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}

	// Non-root, read-only, no privilege.
	psc, sc := d.Spec.Template.Spec.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
		t.Errorf("pod security context %+v: want runAsNonRoot, user 65532", psc)
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("container security context %+v: want read-only root, no privilege escalation, all capabilities dropped", sc)
	}

	// Keys and secrets come from Secrets, never from values or the image.
	var instance *corev1.Volume
	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "instance" {
			instance = &d.Spec.Template.Spec.Volumes[i]
		}
	}
	if instance == nil || instance.Secret == nil || instance.Secret.SecretName != "foster-instance" {
		t.Fatalf("instance volume %+v, want Secret foster-instance", instance)
	}
	var paths []string
	for _, it := range instance.Secret.Items {
		if strings.Contains(it.Key, "/") {
			t.Errorf("Secret key %q holds '/': Kubernetes refuses it", it.Key)
		}
		paths = append(paths, it.Path)
	}
	for _, p := range []string{"config.json", "ca.pem", "server.crt", "server.key", "root.json", "keys/intermediate_ca.key", "keys/tuf-timestamp.key"} {
		if !slices.Contains(paths, p) {
			t.Errorf("instance Secret does not mount %s", p)
		}
	}
	if slices.Contains(paths, "admin.key") {
		t.Errorf("the admin key is mounted into fosterd's pods")
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == "instance" {
			mounted = m.MountPath == "/var/lib/foster" && m.ReadOnly && slices.Contains(c.Args, m.MountPath)
		}
	}
	if !mounted {
		t.Errorf("instance Secret is not mounted read-only at the --data-dir (%v, %v)", c.VolumeMounts, c.Args)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e, ok := env["FOSTER_DB"]; !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != "foster-database" || !slices.Contains(c.Args, "$(FOSTER_DB)") {
		t.Errorf("the database URL does not come from Secret foster-database through --db $(FOSTER_DB): %+v %v", e, c.Args)
	}
	if slices.Contains(c.Args, "--init") {
		t.Errorf("args %v: pods must never initialise an instance", c.Args)
	}

	// The Service reaches the container's named ports.
	for _, p := range r.service.Spec.Ports {
		if _, ok := ports[p.TargetPort.String()]; !ok {
			t.Errorf("Service port %s targets %s, which the container does not name", p.Name, p.TargetPort.String())
		}
	}
	// The PDB keeps a replica up and selects the pods.
	if r.pdb == nil || r.pdb.Spec.MinAvailable == nil || r.pdb.Spec.MinAvailable.IntValue() < 1 || r.pdb.Spec.MinAvailable.IntValue() >= int(*d.Spec.Replicas) {
		t.Errorf("PodDisruptionBudget %+v: want minAvailable in [1, replicas)", r.pdb)
	} else {
		for k, v := range r.pdb.Spec.Selector.MatchLabels {
			if podLabels[k] != v {
				t.Errorf("PDB selector %s=%s does not select the pods", k, v)
			}
		}
	}
	// The NetworkPolicy admits the API port to anyone and /metrics (unauthenticated) to scrapers only.
	if r.networkPolicy == nil || len(r.networkPolicy.Spec.Ingress) != 2 {
		t.Fatalf("NetworkPolicy %+v: want an API rule and a metrics rule", r.networkPolicy)
	}
	for _, rule := range r.networkPolicy.Spec.Ingress {
		for _, p := range rule.Ports {
			if _, ok := ports[p.Port.String()]; !ok {
				t.Errorf("NetworkPolicy names port %s, which the container does not", p.Port.String())
			}
			if p.Port.String() == "metrics" && len(rule.From) == 0 {
				t.Errorf("NetworkPolicy opens the unauthenticated metrics port to everyone")
			}
		}
	}
	if r.serviceMonitor != nil {
		t.Errorf("ServiceMonitor rendered by default (it needs prometheus-operator's CRD)")
	}
}

func TestChartOptions(t *testing.T) {
	r := render(t, "serviceMonitor.enabled=true", "instance.passphrase.secretName=foster-passphrase",
		"blobs.url=s3://fw?region=eu-west-1", "blobs.credentialsSecret=foster-s3", "replicaCount=3", "networkPolicy.enabled=false")
	c := container(t, r.deployment)
	if r.serviceMonitor == nil || len(r.serviceMonitor.Spec.Endpoints) != 1 || r.serviceMonitor.Spec.Endpoints[0].Port != "metrics" {
		t.Fatalf("ServiceMonitor %+v, want one endpoint on port metrics", r.serviceMonitor)
	}
	svcPorts := map[string]bool{}
	for _, p := range r.service.Spec.Ports {
		svcPorts[p.Name] = true
	}
	if !svcPorts[r.serviceMonitor.Spec.Endpoints[0].Port] {
		t.Errorf("ServiceMonitor scrapes port %q, which the Service does not name", r.serviceMonitor.Spec.Endpoints[0].Port)
	}
	var pass *corev1.EnvVar
	for i, e := range c.Env {
		if e.Name == "FOSTER_PASSPHRASE" {
			pass = &c.Env[i]
		}
	}
	if pass == nil || pass.Value != "" || pass.ValueFrom == nil || pass.ValueFrom.SecretKeyRef.Name != "foster-passphrase" {
		t.Errorf("FOSTER_PASSPHRASE %+v, want it from Secret foster-passphrase", pass)
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != "foster-s3" {
		t.Errorf("envFrom %+v, want the S3 credentials Secret", c.EnvFrom)
	}
	if i := slices.Index(c.Args, "--blobs"); i < 0 || c.Args[i+1] != "s3://fw?region=eu-west-1" {
		t.Errorf("args %v, want --blobs s3://fw?region=eu-west-1", c.Args)
	}
	if *r.deployment.Spec.Replicas != 3 || r.networkPolicy != nil {
		t.Errorf("replicaCount=3, networkPolicy.enabled=false not honoured")
	}
}

// A typo in a field name fails decoding: the check the tests above rely on.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	r := render(t)
	for _, typo := range []struct{ kind, from, to string }{
		{"Deployment", "readinessProbe:", "readynessProbe:"},
		{"Deployment", "readOnlyRootFilesystem:", "readOnlyRootFileSystem:"},
		{"PodDisruptionBudget", "minAvailable:", "minAvaliable:"},
		{"ServiceMonitor", "endpoints:", "endpoint:"},
	} {
		doc := r.docs[typo.kind]
		if typo.kind == "ServiceMonitor" {
			doc = render(t, "serviceMonitor.enabled=true").docs["ServiceMonitor"]
		}
		bad := bytes.Replace(doc, []byte(typo.from), []byte(typo.to), 1)
		if bytes.Equal(bad, doc) {
			t.Fatalf("%s has no %q", typo.kind, typo.from)
		}
		var into any = &appsv1.Deployment{}
		switch typo.kind {
		case "PodDisruptionBudget":
			into = &policyv1.PodDisruptionBudget{}
		case "ServiceMonitor":
			into = &serviceMonitor{}
		}
		if err := decodeStrict(bad, into); err == nil || !strings.Contains(err.Error(), strings.TrimSuffix(typo.to, ":")) {
			t.Errorf("%s with %q: %v, want an error naming it", typo.kind, typo.to, err)
		}
	}
}
