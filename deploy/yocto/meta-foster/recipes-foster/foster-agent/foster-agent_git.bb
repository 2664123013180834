SUMMARY = "Foster device agent: TUF-verified A/B firmware updates with signed install attestations"
DESCRIPTION = "foster-agent enrolls the device with its own key, renews its certificate, \
installs verified firmware through RAUC (or U-Boot A/B, SWUpdate, a script) and attests every install."
HOMEPAGE = "https://github.com/foster-ota/foster"
# The repository carries no LICENSE file yet: set LICENSE and
# LIC_FILES_CHKSUM to the license of the release you build.
LICENSE = "CLOSED"

GO_IMPORT = "github.com/foster-ota/foster"
GO_INSTALL = "${GO_IMPORT}/cmd/foster-agent"
SRC_URI = "git://${GO_IMPORT}.git;protocol=https;branch=main;destsuffix=${GO_SRCURI_DESTSUFFIX} \
           file://config.json \
           file://data-partition.conf \
           file://health \
"
# Pin the release you tested; AUTOREV is for development only.
SRCREV = "${AUTOREV}"
PV = "0.0+git${SRCPV}"

inherit go-mod systemd

# Go modules are fetched from the module proxy at compile time (go.sum pins
# every one of them); use go-mod-vcs or a vendor tarball for offline builds.
do_compile[network] = "1"
# A static binary: no libc dependency, and no test hooks (they exist only in
# builds with -tags fostertest).
CGO_ENABLED = "0"
GOBUILDFLAGS:append = " -trimpath"

# The agent drives RAUC; drop it for an installer that does not need it.
RDEPENDS:${PN} += "rauc"

SYSTEMD_SERVICE:${PN} = "foster-agent.service"
SYSTEMD_AUTO_ENABLE = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}/foster-agent.service.d ${D}${sysconfdir}/foster-agent
    # The same unit as deploy/systemd/foster-agent.service in the repository.
    install -m 0644 ${S}/src/${GO_IMPORT}/deploy/systemd/foster-agent.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${UNPACKDIR}/data-partition.conf ${D}${systemd_system_unitdir}/foster-agent.service.d/
    install -m 0644 ${UNPACKDIR}/config.json ${D}${sysconfdir}/foster-agent/config.json
    install -d ${D}${libexecdir}/foster
    install -m 0755 ${UNPACKDIR}/health ${D}${libexecdir}/foster/health
}

FILES:${PN} += "${systemd_system_unitdir} ${libexecdir}/foster"
CONFFILES:${PN} = "${sysconfdir}/foster-agent/config.json"
