package instance

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Every config.json setting can also be given as an environment variable
// and as a fosterd flag (docs/CONFIG.md). Precedence: flag > environment >
// config.json > default. A setting is named by its dotted JSON path
// ("http.read_timeout"); its environment variable is FOSTER_ and the path
// in upper case with "." as "_" (FOSTER_HTTP_READ_TIMEOUT); its flag is
// --set http.read_timeout=VALUE (some also have a flag of their own,
// --listen, --db, ...). Objects and lists (tuf_keys.model_keys,
// tuf_keys.extra) take JSON.

// Settings lists the dotted paths of every config.json setting.
func Settings() []string { return settingPaths(reflect.TypeFor[Config](), "") }

func settingPaths(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		if f.Type.Kind() == reflect.Struct {
			out = append(out, settingPaths(f.Type, prefix+name+".")...)
			continue
		}
		out = append(out, prefix+name)
	}
	return out
}

// SettingEnv is the environment variable of the setting at path.
func SettingEnv(path string) string {
	return "FOSTER_" + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// Set sets the setting at path (see Settings) from its text.
func (c *Config) Set(path, value string) error {
	v := reflect.ValueOf(c).Elem()
	parts := strings.Split(path, ".")
	for i, part := range parts {
		f, ok := fieldByJSON(v, part)
		if !ok || (i < len(parts)-1) != (f.Kind() == reflect.Struct) {
			return fmt.Errorf("unknown config.json setting %q (docs/CONFIG.md lists them)", path)
		}
		v = f
	}
	bad := func(want string) error { return fmt.Errorf("setting %s=%q: want %s", path, value, want) }
	switch v.Kind() {
	case reflect.String:
		v.SetString(value)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil {
			return bad("an integer")
		}
		v.SetInt(n)
	case reflect.Bool:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return bad("true or false")
		}
		v.SetBool(b)
	case reflect.Map, reflect.Slice:
		p := reflect.New(v.Type())
		if err := json.Unmarshal([]byte(value), p.Interface()); err != nil {
			return bad("JSON: " + err.Error())
		}
		v.Set(p.Elem())
	default:
		return fmt.Errorf("setting %s: unsupported type %s", path, v.Type())
	}
	return nil
}

func fieldByJSON(v reflect.Value, name string) (reflect.Value, bool) {
	if v.Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	for i, f := range reflect.VisibleFields(v.Type()) {
		if n, _, _ := strings.Cut(f.Tag.Get("json"), ","); n == name && f.IsExported() {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// ApplyEnv sets every setting whose environment variable lookup finds.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	for _, p := range Settings() {
		if val, ok := lookup(SettingEnv(p)); ok {
			if err := c.Set(p, val); err != nil {
				return fmt.Errorf("%s: %w", SettingEnv(p), err)
			}
		}
	}
	return nil
}

// ApplySets applies --set flags, "path=value" each, in order.
func (c *Config) ApplySets(sets []string) error {
	for _, s := range sets {
		path, val, ok := strings.Cut(s, "=")
		if !ok || !slices.Contains(Settings(), path) {
			return fmt.Errorf("--set %q: want KEY=VALUE with KEY a config.json setting (docs/CONFIG.md)", s)
		}
		if err := c.Set(path, val); err != nil {
			return fmt.Errorf("--set: %w", err)
		}
	}
	return nil
}
