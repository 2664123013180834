package apierr

// CodeNudgeUnavailable: fosterd has no MQTT broker configured, or the
// broker is down; devices still find updates at their next poll (503).
const CodeNudgeUnavailable = "nudge_unavailable"
