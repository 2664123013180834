package instance_test

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/instance"
)

// settings lists the dotted JSON paths of every leaf of t (a struct).
func settings(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" || name == "" {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			out = append(out, settings(f.Type, prefix+name+".")...)
			continue
		}
		out = append(out, prefix+name)
	}
	return out
}

func TestConfigReferenceListsEverySetting(t *testing.T) {
	doc, err := os.ReadFile("../../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	all := settings(reflect.TypeFor[instance.Config](), "")
	if len(all) < 30 {
		t.Fatalf("found only %d settings: %v", len(all), all)
	}
	for _, s := range all {
		if !strings.Contains(string(doc), "| `"+s+"` |") {
			t.Errorf("docs/CONFIG.md has no row for config.json setting %s", s)
		}
	}
}
