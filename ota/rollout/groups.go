package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/store"
)

// Groups are made of tags (kind tag: every device with the tag) and serial
// lists (kind static). A device's groups reach it signed, as its membership
// target: whenever tags or groups change, the Controller recomputes the
// groups of every device the change touches and signs them with
// SetMemberships, per model, at most MaxMembershipBatch devices a call.
//
// The store change is made first; if signing then fails, the error says so
// and SyncMemberships (or the next change to the device) signs it again.

// MaxMembershipBatch bounds one SetMemberships call.
const MaxMembershipBatch = store.MaxDevicePage

// TagDevice tags a device and re-signs its groups.
func (c *Controller) TagDevice(ctx context.Context, actor, deviceID string, tags []string) error {
	if err := c.store.TagDevice(ctx, deviceID, tags); err != nil {
		return err
	}
	c.auditDetail(ctx, actor, "device.tag", fmt.Sprintf("device=%s tags=%s", deviceID, strings.Join(tags, ",")))
	return c.syncDevices(ctx, []string{deviceID})
}

// UntagDevice removes tags from a device and re-signs its groups.
func (c *Controller) UntagDevice(ctx context.Context, actor, deviceID string, tags []string) error {
	if err := c.store.UntagDevice(ctx, deviceID, tags); err != nil {
		return err
	}
	c.auditDetail(ctx, actor, "device.untag", fmt.Sprintf("device=%s tags=%s", deviceID, strings.Join(tags, ",")))
	return c.syncDevices(ctx, []string{deviceID})
}

// CreateGroup records a group and signs the groups of its devices.
// rollout.DefaultGroup is reserved: it is the group of devices in none.
func (c *Controller) CreateGroup(ctx context.Context, actor string, g store.Group) (store.Group, error) {
	if g.Name == rollout.DefaultGroup {
		return store.Group{}, invalid("group name %q is reserved for devices in no group", g.Name)
	}
	g.CreatedBy = actor
	g, err := c.store.CreateGroup(ctx, g)
	if err != nil {
		return store.Group{}, err
	}
	c.auditDetail(ctx, actor, "group.create", fmt.Sprintf("group=%s kind=%s tag=%s serials=%d", g.Name, g.Kind, g.Tag, g.SerialCount))
	ids, err := c.groupDevices(ctx, g)
	if err != nil {
		return g, err
	}
	return g, c.syncDevices(ctx, ids)
}

// DeleteGroup removes a group and re-signs the groups of its devices. A
// group named by an active rollout cannot be deleted.
func (c *Controller) DeleteGroup(ctx context.Context, actor, name string) error {
	g, err := c.store.GetGroup(ctx, name)
	if err != nil {
		return err
	}
	active, err := c.store.ListRollouts(ctx, store.RolloutFilter{Active: true, Limit: store.MaxRolloutPage})
	if err != nil {
		return err
	}
	for _, r := range active {
		if slices.Contains(r.Groups, name) {
			return fmt.Errorf("%w: group %s is used by active rollout %s", ErrTransition, name, r.ID)
		}
	}
	ids, err := c.groupDevices(ctx, g)
	if err != nil {
		return err
	}
	if err := c.store.DeleteGroup(ctx, name); err != nil {
		return err
	}
	c.auditDetail(ctx, actor, "group.delete", "group="+name)
	return c.syncDevices(ctx, ids)
}

// groupDevices lists the ids of a group's devices.
func (c *Controller) groupDevices(ctx context.Context, g store.Group) ([]string, error) {
	var ids []string
	if g.Kind == store.GroupTag {
		after := ""
		for {
			page, err := c.store.DevicesWithTag(ctx, g.Tag, after, store.MaxDevicePage)
			if err != nil {
				return nil, err
			}
			ids = append(ids, page...)
			if len(page) < store.MaxDevicePage {
				return ids, nil
			}
			after = page[len(page)-1]
		}
	}
	after := ""
	for {
		serials, err := c.store.GroupSerials(ctx, g.Name, after, store.MaxDevicePage)
		if err != nil {
			return nil, err
		}
		for _, s := range serials {
			ds, err := c.store.DevicesBySerial(ctx, s)
			if err != nil {
				return nil, err
			}
			for _, d := range ds {
				ids = append(ids, d.ID)
			}
		}
		if len(serials) < store.MaxDevicePage {
			return ids, nil
		}
		after = serials[len(serials)-1]
	}
}

// SyncMemberships re-signs the groups of every device of model (after a
// failed signing, or for devices enrolled after their static group was
// made).
func (c *Controller) SyncMemberships(ctx context.Context, model string) error {
	if err := identity.ValidName(model); err != nil {
		return invalid("model: %v", err)
	}
	after := ""
	for {
		page, err := c.store.PageFleet(ctx, store.FleetQuery{Model: model, AfterID: after, Limit: MaxMembershipBatch})
		if err != nil {
			return err
		}
		members := make(map[string][]string, len(page))
		for _, d := range page {
			members[d.Serial] = d.Groups
		}
		if err := c.publishMembers(ctx, model, members); err != nil {
			return err
		}
		if len(page) < MaxMembershipBatch {
			return nil
		}
		after = page[len(page)-1].ID
	}
}

// syncDevices computes and signs the groups of the devices ids.
func (c *Controller) syncDevices(ctx context.Context, ids []string) error {
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var errs []error
	for len(ids) > 0 {
		batch := ids[:min(len(ids), MaxMembershipBatch)]
		ids = ids[len(batch):]
		groups, err := c.store.DeviceGroups(ctx, batch)
		if err != nil {
			return err
		}
		byModel := map[string]map[string][]string{}
		for _, id := range batch {
			p, err := identity.ParseURI(id)
			if err != nil || p.Role != identity.RoleDevice {
				return fmt.Errorf("device id %q: not a device URN", id)
			}
			if byModel[p.Model] == nil {
				byModel[p.Model] = map[string][]string{}
			}
			byModel[p.Model][p.Serial()] = groups[id]
		}
		for model, members := range byModel {
			if err := c.publishMembers(ctx, model, members); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Controller) publishMembers(ctx context.Context, model string, members map[string][]string) error {
	var errs []error
	for serial, gs := range members {
		if len(gs) > rollout.MaxGroups {
			errs = append(errs, fmt.Errorf("device %s of %s is in %d groups, at most %d can be signed: its membership is not updated", serial, model, len(gs), rollout.MaxGroups))
			delete(members, serial)
			continue
		}
		if gs == nil {
			members[serial] = []string{}
		}
	}
	if len(members) == 0 {
		return errors.Join(errs...)
	}
	if err := c.pub.SetMemberships(ctx, model, members); err != nil {
		errs = append(errs, fmt.Errorf("signing group memberships of %d %s devices (recorded, not yet signed; SyncMemberships retries): %w", len(members), model, err))
	}
	return errors.Join(errs...)
}

func (c *Controller) auditDetail(ctx context.Context, actor, action, detail string) {
	if err := c.store.Audit(ctx, actor, action, detail); err != nil {
		c.log.Error("recording audit event", "action", action, "err", err)
	}
}

// membershipReader reads back a device's signed groups (*tufrepo.Repo).
type membershipReader interface {
	Membership(model, serial string) (groups []string, ok bool)
}

// SyncEnrolled signs the groups of a device that has just enrolled: one
// whose serial a static group lists, or a re-enrolled device whose tags
// outlived it. It signs nothing when the device's groups are already
// signed as they are (most enrollments: no group, no record), so enrolling
// a fleet does not re-sign a bin per device.
func (c *Controller) SyncEnrolled(ctx context.Context, deviceID string) error {
	p, err := identity.ParseURI(deviceID)
	if err != nil || p.Role != identity.RoleDevice {
		return invalid("device id %q: not a device URN", deviceID)
	}
	groups, err := c.store.DeviceGroups(ctx, []string{deviceID})
	if err != nil {
		return err
	}
	want := groups[deviceID]
	if mr, ok := c.pub.(membershipReader); ok {
		signed, found := mr.Membership(p.Model, p.Serial())
		if (!found && len(want) == 0) || (found && slices.Equal(signed, want)) {
			return nil
		}
	} else if len(want) == 0 {
		return nil
	}
	return c.syncDevices(ctx, []string{deviceID})
}
