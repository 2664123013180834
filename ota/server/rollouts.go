package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/foster-ota/foster/ota/rollout"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// Staged rollouts (admin API; docs/ROLLOUTS.md): create, list, show,
// promote, pause, resume, abort; device tags; groups. Every decision is
// taken by ota/rollout's Controller, which signs it as rollout terms and
// records it in the audit trail; this group only checks and maps.
// Admins act; auditors read.

// Error codes of rollouts (JSON "code").
const (
	codeRolloutActive  = "rollout_active"  // another active rollout covers the model and groups, or the release
	codeRolloutState   = "rollout_state"   // the rollout's state does not allow the action
	codeRolloutChanged = "rollout_changed" // changed concurrently: re-read and retry
)

// Rollouts is the rollout control plane (implemented by *rollout.Controller).
type Rollouts interface {
	rolloutControl   // rollouts.go
	rolloutNotifier  // attestations.go
	membershipSyncer // enrollment.go
}

// rolloutControl is what the rollout group asks of the Controller.
type rolloutControl interface {
	Create(ctx context.Context, actor string, req rollout.CreateRequest) (rollout.Status, error)
	Get(ctx context.Context, id string) (rollout.Status, error)
	List(ctx context.Context, f store.RolloutFilter) ([]rollout.Status, error)
	Promote(ctx context.Context, actor, id string) (rollout.Status, error)
	Pause(ctx context.Context, actor, id string) (rollout.Status, error)
	Resume(ctx context.Context, actor, id string) (rollout.Status, error)
	Abort(ctx context.Context, actor, id string) (rollout.Status, error)
	TagDevice(ctx context.Context, actor, deviceID string, tags []string) error
	UntagDevice(ctx context.Context, actor, deviceID string, tags []string) error
	CreateGroup(ctx context.Context, actor string, g store.Group) (store.Group, error)
	DeleteGroup(ctx context.Context, actor, name string) error
}

// groupStore is what the rollout group reads of the store (*store.DB).
type groupStore interface {
	GetDevice(ctx context.Context, id string) (store.Device, error)
	DevicesBySerial(ctx context.Context, serial string) ([]store.Device, error)
	DeviceTags(ctx context.Context, deviceID string) ([]string, error)
	DeviceGroups(ctx context.Context, deviceIDs []string) (map[string][]string, error)
	GetGroup(ctx context.Context, name string) (store.Group, error)
	ListGroups(ctx context.Context) ([]store.Group, error)
	GroupSerials(ctx context.Context, name, after string, limit int) ([]string, error)
	DevicesWithTag(ctx context.Context, tag, afterID string, limit int) ([]string, error)
}

// rolloutAPI is the rollout and group admin group. Safe for concurrent use.
type rolloutAPI struct {
	ctl   rolloutControl
	store groupStore
	log   *slog.Logger
}

// Bounds on rollout and group requests.
const (
	maxGroupBody     = 4 << 20 // bytes: a static group of 100,000 serials
	maxGroupShowPage = store.MaxDevicePage
)

func (g *rolloutAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/rollouts", e.handle(adminOnly, g.create))
	mux.Handle("GET /v1/rollouts", e.handle(readers, g.list))
	mux.Handle("GET /v1/rollouts/{id}", e.handle(readers, g.show))
	for action, fn := range map[string]func(context.Context, string, string) (rollout.Status, error){
		"promote": g.ctl.Promote, "pause": g.ctl.Pause, "resume": g.ctl.Resume, "abort": g.ctl.Abort,
	} {
		mux.Handle("POST /v1/rollouts/{id}/"+action, e.handle(adminOnly, g.act(fn)))
	}
	mux.Handle("GET /v1/devices/{id}/tags", e.handle(readers, g.tags))
	mux.Handle("POST /v1/devices/{id}/tags", e.handle(adminOnly, g.tag(g.ctl.TagDevice, true)))
	mux.Handle("POST /v1/devices/{id}/untag", e.handle(adminOnly, g.tag(g.ctl.UntagDevice, false)))
	mux.Handle("POST /v1/groups", e.handle(adminOnly, g.createGroup))
	mux.Handle("GET /v1/groups", e.handle(readers, g.listGroups))
	mux.Handle("GET /v1/groups/{name}", e.handle(readers, g.showGroup))
	mux.Handle("DELETE /v1/groups/{name}", e.handle(adminOnly, g.deleteGroup))
}

// RolloutView is a rollout as the API shows it: the Controller's status
// (the row, the signed share, health) with durations as Go duration
// strings and the current wave's percentage.
type RolloutView struct {
	rollout.Status
	WaveInterval    string `json:"wave_interval"`    // e.g. "6h0m0s"
	SilenceDeadline string `json:"silence_deadline"` // e.g. "24h0m0s"
	// Percent is the current wave's share of the eligible devices.
	Percent int `json:"percent"`
}

func rolloutView(s rollout.Status) RolloutView {
	v := RolloutView{Status: s, WaveInterval: s.Rollout.WaveInterval.String(), SilenceDeadline: s.Rollout.SilenceDeadline.String()}
	if s.Wave >= 0 && s.Wave < len(s.Waves) {
		v.Percent = s.Waves[s.Wave]
	}
	v.Groups = nonNil(v.Groups)
	v.HaltIndices = nonNil(v.HaltIndices)
	v.Health.FailedIndices = nonNil(v.Health.FailedIndices)
	return v
}

// CreateRolloutRequest is the body of POST /v1/rollouts. Zero fields take
// ota/rollout's defaults.
type CreateRolloutRequest struct {
	Model   string   `json:"model"`
	Version string   `json:"version"`
	Groups  []string `json:"groups,omitempty"`
	Waves   []int    `json:"waves,omitempty"`
	// WaveInterval and SilenceDeadline are Go durations ("6h").
	WaveInterval    string  `json:"wave_interval,omitempty"`
	MaxFailureRate  float64 `json:"max_failure_rate,omitempty"`
	MinSample       int     `json:"min_sample,omitempty"`
	SilenceDeadline string  `json:"silence_deadline,omitempty"`
	// Supersede aborts the active rollout of an older release that covers
	// the same model and groups, instead of refusing.
	Supersede bool `json:"supersede,omitempty"`
}

func duration(name, v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, badRequest("%s %q: want a positive duration like 6h", name, v)
	}
	return d, nil
}

func (g *rolloutAPI) create(w http.ResponseWriter, r *http.Request) error {
	var in CreateRolloutRequest
	if err := decodeJSON(w, r, maxAdminBody, &in); err != nil {
		return err
	}
	if !validVersion(in.Version) {
		return badRequest("version %q is not a semantic version (e.g. 1.0.1)", in.Version)
	}
	req := rollout.CreateRequest{Model: in.Model, Version: in.Version, Groups: in.Groups, Waves: in.Waves,
		MaxFailureRate: in.MaxFailureRate, MinSample: in.MinSample}
	var err error
	if req.WaveInterval, err = duration("wave_interval", in.WaveInterval); err != nil {
		return err
	}
	if req.SilenceDeadline, err = duration("silence_deadline", in.SilenceDeadline); err != nil {
		return err
	}
	if in.MaxFailureRate < 0 || in.MinSample < 0 {
		return badRequest("max_failure_rate and min_sample must not be negative")
	}
	if in.Waves != nil && len(in.Waves) == 0 {
		return badRequest("waves: give at least one wave, the last 100")
	}
	actor := callerURI(r)
	s, err := g.ctl.Create(r.Context(), actor, req)
	if errors.Is(err, store.ErrRolloutActive) && in.Supersede {
		if err = g.supersede(r.Context(), actor, req); err == nil {
			s, err = g.ctl.Create(r.Context(), actor, req)
		}
	}
	if err != nil {
		return rolloutError(err)
	}
	return writeJSON(w, http.StatusCreated, rolloutView(s))
}

// supersede aborts the active rollouts that keep req from starting: those
// of the model over the same groups. Only a rollout of an older release is
// superseded; one of the same or a newer release is refused.
func (g *rolloutAPI) supersede(ctx context.Context, actor string, req rollout.CreateRequest) error {
	active, err := g.ctl.List(ctx, store.RolloutFilter{Model: req.Model, Active: true, Limit: rollout.MaxList})
	if err != nil {
		return err
	}
	key := store.GroupsKey(req.Groups)
	var old []rollout.Status
	for _, a := range active {
		if store.GroupsKey(a.Groups) != key && a.Version != req.Version {
			continue
		}
		if compareVersions(a.Version, req.Version) >= 0 {
			return apierr.New(http.StatusConflict, codeRolloutActive,
				"rollout %s of %s %s is active and not older than %s: only a newer release supersedes a rollout", a.ID, a.Model, a.Version, req.Version)
		}
		old = append(old, a)
	}
	for _, a := range old {
		if _, err := g.ctl.Abort(ctx, actor, a.ID); err != nil {
			return fmt.Errorf("superseding rollout %s: %w", a.ID, err)
		}
		g.log.Info("rollout superseded", "rollout", a.ID, "by_version", req.Version, "actor", actor)
	}
	return nil
}

// list: ?model=M&active=true&limit=N (newest first; limit default and
// maximum rollout.MaxList).
func (g *rolloutAPI) list(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.RolloutFilter{Model: q.Get("model"), Limit: rollout.MaxList}
	if f.Model != "" {
		if err := identity.ValidName(f.Model); err != nil {
			return badRequest("model: %v", err)
		}
	}
	if v := q.Get("active"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return badRequest("active must be true or false")
		}
		f.Active = b
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > rollout.MaxList {
			return badRequest("limit must be between 1 and %d", rollout.MaxList)
		}
		f.Limit = n
	}
	ss, err := g.ctl.List(r.Context(), f)
	if err != nil {
		return rolloutError(err)
	}
	out := make([]RolloutView, 0, len(ss))
	for _, s := range ss {
		out = append(out, rolloutView(s))
	}
	return writeJSON(w, http.StatusOK, out)
}

func rolloutID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if err := identity.ValidName(id); err != nil {
		return "", apierr.New(http.StatusNotFound, apierr.CodeNotFound, "rollout %q not found", id)
	}
	return id, nil
}

func (g *rolloutAPI) show(w http.ResponseWriter, r *http.Request) error {
	id, err := rolloutID(r)
	if err != nil {
		return err
	}
	s, err := g.ctl.Get(r.Context(), id)
	if err != nil {
		return rolloutError(err)
	}
	return writeJSON(w, http.StatusOK, rolloutView(s))
}

// act applies promote, pause, resume or abort (no body).
func (g *rolloutAPI) act(fn func(ctx context.Context, actor, id string) (rollout.Status, error)) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if _, err := readBounded(w, r, maxAdminBody); err != nil {
			return err
		}
		id, err := rolloutID(r)
		if err != nil {
			return err
		}
		s, err := fn(r.Context(), callerURI(r), id)
		if err != nil {
			return rolloutError(err)
		}
		return writeJSON(w, http.StatusOK, rolloutView(s))
	}
}

// DeviceTags is a device's tags and the groups they and static groups put
// it in (what its signed membership says).
type DeviceTags struct {
	DeviceID string   `json:"device_id"`
	Tags     []string `json:"tags"`
	Groups   []string `json:"groups"`
}

func (g *rolloutAPI) deviceTags(ctx context.Context, id string) (DeviceTags, error) {
	tags, err := g.store.DeviceTags(ctx, id)
	if err != nil {
		return DeviceTags{}, err
	}
	groups, err := g.store.DeviceGroups(ctx, []string{id})
	if err != nil {
		return DeviceTags{}, err
	}
	return DeviceTags{DeviceID: id, Tags: nonNil(tags), Groups: nonNil(groups[id])}, nil
}

func (g *rolloutAPI) tags(w http.ResponseWriter, r *http.Request) error {
	d, err := resolveDevice(r.Context(), g.store, r.PathValue("id"))
	if err != nil {
		return err
	}
	out, err := g.deviceTags(r.Context(), d.ID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

// tag adds or removes tags: body {"tags": [...]}.
func (g *rolloutAPI) tag(fn func(ctx context.Context, actor, deviceID string, tags []string) error, adding bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in struct {
			Tags []string `json:"tags"`
		}
		if err := decodeJSON(w, r, maxAdminBody, &in); err != nil {
			return err
		}
		if len(in.Tags) == 0 || len(in.Tags) > store.MaxDeviceTags {
			return badRequest("tags: give 1 to %d tags", store.MaxDeviceTags)
		}
		for _, t := range in.Tags {
			if err := identity.ValidName(t); err != nil {
				return badRequest("tag: %v", err)
			}
		}
		d, err := resolveDevice(r.Context(), g.store, r.PathValue("id"))
		if err != nil {
			return err
		}
		cur, err := g.store.DeviceTags(r.Context(), d.ID)
		if err != nil {
			return err
		}
		added := 0
		for _, t := range slices.Compact(slices.Sorted(slices.Values(in.Tags))) {
			if !slices.Contains(cur, t) {
				added++
			}
		}
		if adding && len(cur)+added > store.MaxDeviceTags {
			return badRequest("device %s has %d tags: at most %d", d.ID, len(cur), store.MaxDeviceTags)
		}
		if err := fn(r.Context(), callerURI(r), d.ID, in.Tags); err != nil {
			return rolloutError(err)
		}
		out, err := g.deviceTags(r.Context(), d.ID)
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, out)
	}
}

// CreateGroupRequest is the body of POST /v1/groups: a tag group (Tag) or
// a static group (Serials, 1 to store.MaxStaticSerials).
type CreateGroupRequest struct {
	Name    string   `json:"name"`
	Tag     string   `json:"tag,omitempty"`
	Serials []string `json:"serials,omitempty"`
}

func (g *rolloutAPI) createGroup(w http.ResponseWriter, r *http.Request) error {
	var in CreateGroupRequest
	if err := decodeJSON(w, r, maxGroupBody, &in); err != nil {
		return err
	}
	if err := identity.ValidName(in.Name); err != nil {
		return badRequest("group name: %v", err)
	}
	grp := store.Group{Name: in.Name}
	switch {
	case in.Tag != "" && len(in.Serials) == 0:
		if err := identity.ValidName(in.Tag); err != nil {
			return badRequest("tag: %v", err)
		}
		grp.Kind, grp.Tag = store.GroupTag, in.Tag
	case in.Tag == "" && len(in.Serials) > 0:
		if len(in.Serials) > store.MaxStaticSerials {
			return badRequest("%d serials: a static group lists at most %d", len(in.Serials), store.MaxStaticSerials)
		}
		for _, s := range in.Serials {
			if err := identity.ValidName(s); err != nil {
				return badRequest("serial: %v", err)
			}
		}
		grp.Kind, grp.Serials = store.GroupStatic, in.Serials
	default:
		return badRequest("give a tag (a tag group) or serials (a static group), not both and not neither")
	}
	if _, err := g.store.GetGroup(r.Context(), in.Name); err == nil {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "group %s already exists", in.Name)
	}
	if gs, err := g.store.ListGroups(r.Context()); err != nil {
		return err
	} else if len(gs) >= store.MaxGroupCount {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%d groups exist, at most %d: delete one first", len(gs), store.MaxGroupCount)
	}
	out, err := g.ctl.CreateGroup(r.Context(), callerURI(r), grp)
	if err != nil {
		if out.Name == "" {
			return rolloutError(err)
		}
		// Recorded, but signing some memberships failed: say so.
		return apierr.New(http.StatusInternalServerError, apierr.CodeInternal, "group %s created, but %v", out.Name, err)
	}
	out.Serials = nil
	return writeJSON(w, http.StatusCreated, out)
}

func (g *rolloutAPI) listGroups(w http.ResponseWriter, r *http.Request) error {
	gs, err := g.store.ListGroups(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(gs))
}

// GroupDetail is a group with its first members: serials of a static
// group, device ids of a tag group (at most store.MaxDevicePage;
// ?after= pages on).
type GroupDetail struct {
	store.Group
	Members []string `json:"members"`
}

func (g *rolloutAPI) showGroup(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	grp, err := g.store.GetGroup(r.Context(), name)
	if err != nil {
		return rolloutError(err)
	}
	after := r.URL.Query().Get("after")
	if len(after) > 256 {
		return badRequest("after is too long")
	}
	var members []string
	if grp.Kind == store.GroupTag {
		members, err = g.store.DevicesWithTag(r.Context(), grp.Tag, after, maxGroupShowPage)
	} else {
		members, err = g.store.GroupSerials(r.Context(), grp.Name, after, maxGroupShowPage)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, GroupDetail{Group: grp, Members: nonNil(members)})
}

func (g *rolloutAPI) deleteGroup(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := g.ctl.DeleteGroup(r.Context(), callerURI(r), name); err != nil {
		return rolloutError(err)
	}
	return writeJSON(w, http.StatusOK, map[string]string{"deleted": name})
}

func callerURI(r *http.Request) string {
	p, _ := principalFrom(r.Context())
	return p.URI()
}

// rolloutError maps the Controller's and the store's refusals.
func rolloutError(err error) error {
	var ae *apierr.Error
	switch {
	case errors.As(err, &ae):
		return err
	case errors.Is(err, rollout.ErrInvalid):
		return badRequest("%v", err)
	case errors.Is(err, rollout.ErrTransition):
		return apierr.New(http.StatusConflict, codeRolloutState, "%v", err)
	case errors.Is(err, store.ErrRolloutActive):
		return apierr.New(http.StatusConflict, codeRolloutActive, "%v (or create it with supersede to abort an older release's rollout)", err)
	case errors.Is(err, store.ErrRolloutChanged):
		return apierr.New(http.StatusConflict, codeRolloutChanged, "%v: read it again and retry", err)
	case errors.Is(err, store.ErrNotFound):
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "%v", err)
	case errors.Is(err, store.ErrConflict):
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	}
	return err
}
