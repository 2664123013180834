package server

import (
	"errors"
	"net/http"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/store"
)

// The store's and the CA's refusals as API errors, for every group that
// meets them. The store and the CA return typed errors; only the handlers
// (through these) give them an HTTP status.

// identityError maps store and CA refusals of the identity lifecycle
// (enrollment, renewal, devices, stations, credentials).
func identityError(err error) error {
	switch {
	case errors.Is(err, store.ErrTokenUsed):
		return apierr.New(http.StatusConflict, apierr.CodeTokenUsed, "enrollment token was already used")
	case errors.Is(err, store.ErrTokenInvalid), errors.Is(err, store.ErrTokenExpired):
		return apierr.New(http.StatusUnauthorized, apierr.CodeTokenInvalid, "%v", err)
	case errors.Is(err, store.ErrTokenBinding):
		return apierr.New(http.StatusForbidden, apierr.CodeTokenInvalid, "%v", err)
	case errors.Is(err, store.ErrClone):
		return apierr.New(http.StatusConflict, apierr.CodeClone, "%v", err)
	case errors.Is(err, store.ErrKeyMismatch):
		return apierr.New(http.StatusConflict, apierr.CodeKeyMismatch, "%v", err)
	case errors.Is(err, store.ErrDeviceRevoked), errors.Is(err, store.ErrSuperseded), errors.Is(err, store.ErrStationRevoked):
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "%v", err)
	case errors.Is(err, store.ErrReprovisioning):
		return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "%v", err)
	case errors.Is(err, store.ErrStationExpired), errors.Is(err, store.ErrStationQuota), errors.Is(err, store.ErrStationPolicy):
		return apierr.New(http.StatusForbidden, apierr.CodeStationRefused, "%v", err)
	case errors.Is(err, store.ErrNotFound):
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "%v", err)
	case errors.Is(err, store.ErrConflict):
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	}
	return csrError(err)
}

// csrError maps the CA's refusals of a CSR.
func csrError(err error) error {
	if errors.Is(err, ca.ErrBadCSR) || errors.Is(err, ca.ErrWeakKey) || errors.Is(err, ca.ErrIdentityMismatch) {
		return badRequest("%v", err)
	}
	return err
}

// tokenError maps the CA's refusals of a station or renew token.
func tokenError(err error) error {
	switch {
	case errors.Is(err, ca.ErrGraceExpired):
		return apierr.New(http.StatusForbidden, apierr.CodeGraceExpired, "%v", err)
	case errors.Is(err, ca.ErrTokenExpired), errors.Is(err, ca.ErrBadToken):
		return apierr.New(http.StatusUnauthorized, apierr.CodeTokenInvalid, "%v", err)
	}
	return err
}

// adminError maps admin credential refusals, then identityError's.
func adminError(err error) error {
	switch {
	case errors.Is(err, store.ErrLastAdmin):
		return apierr.New(http.StatusConflict, apierr.CodeLastAdmin, "%v", err)
	case errors.Is(err, store.ErrCredentialExists):
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	}
	return identityError(err)
}
