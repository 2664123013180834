package nudgemsg

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// The broker settings fosterd (ota/nudge) and the agent
// (client/internal/nudge) connect with: one parser, so both accept the same
// URLs and TLS settings.

// CheckBroker validates a broker URL: tcp:// or mqtt:// (plain), ssl://,
// tls://, mqtts:// or tcps:// (TLS), with a host and a port.
func CheckBroker(broker string) error {
	_, err := brokerTLS(broker)
	return err
}

func brokerTLS(broker string) (bool, error) {
	u, err := url.Parse(broker)
	if err != nil || u.Host == "" || u.Port() == "" {
		return false, fmt.Errorf("MQTT broker %q: want tcp://HOST:PORT or ssl://HOST:PORT", broker)
	}
	switch u.Scheme {
	case "tcp", "mqtt":
		return false, nil
	case "ssl", "tls", "mqtts", "tcps":
		return true, nil
	}
	return false, fmt.Errorf("MQTT broker %q: scheme %q, want tcp, mqtt, ssl or mqtts", broker, u.Scheme)
}

// ClientOptions are paho options for broker, with the broker's CA and a
// client certificate when given (TLS brokers only).
func ClientOptions(broker, caFile, certFile, keyFile string) (*mqtt.ClientOptions, error) {
	tlsWanted, err := brokerTLS(broker)
	if err != nil {
		return nil, err
	}
	if !tlsWanted && (caFile != "" || certFile != "" || keyFile != "") {
		return nil, fmt.Errorf("MQTT broker %q: TLS settings given for a plain tcp:// broker (use ssl://)", broker)
	}
	opts := mqtt.NewClientOptions().AddBroker(broker)
	if !tlsWanted {
		return opts, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("MQTT broker CA: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("MQTT broker CA %s: no PEM certificate", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("MQTT client certificate and key must be given together")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("MQTT client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	opts.SetTLSConfig(tc)
	return opts, nil
}
