"""One secret-masking rule for the project, and Kafka security errors told as one line naming the setting."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from bridge.kafka_problems import ProblemWatcher, diagnose
from bridge.kafka_settings import KafkaSettings
from bridge.redaction import is_secret_key, masked, masked_url, redact

PW = "s3cr,et%Pw"


@pytest.mark.parametrize("key", ["sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                                 "ssl_key", "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config",
                                 "basic.auth.user.info", "bearer.auth.token", "SASL.PASSWORD", "sasl.jaas.config"])
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["sasl.username", "sasl.mechanism", "security.protocol", "ssl.ca.location",
                                 "bootstrap.servers", "ssl.key.location", "ssl.keystore.location"])
def test_plain_keys(key):
    assert not is_secret_key(key)


def test_masked_and_redact():
    conf = {"sasl.username": "bridge", "sasl.password": PW, "basic.auth.user.info": f"u:{PW}x"}
    assert masked(conf) == {"sasl.username": "bridge", "sasl.password": "***", "basic.auth.user.info": "***"}
    text = f"login {PW} failed; url http://u:{PW.replace('%', '%25').replace(',', '%2C')}@h; {PW}x"
    assert PW not in redact(text, conf) and "%2C" not in redact(text, conf)
    assert redact(f"user bridge pw {PW}", conf) == "user bridge pw ***"


def test_masked_url():
    assert masked_url("http://u:p@sr:8081,https://sr2/x") == "http://u:***@sr:8081,https://sr2/x"
    assert masked_url(None) is None


def test_kafka_settings_repr_masks_secrets():
    settings = KafkaSettings(kafka_config={"sasl.username": "bridge", "sasl.password": PW},
                             schema_registry_url=f"http://u:{PW}@sr", schema_registry_config={"ssl.key.password": PW})
    text = repr(settings)
    assert PW not in text and "'sasl.username': 'bridge'" in text and "'sasl.password': '***'" in text


CONF = {"bootstrap.servers": "b:9093", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "bridge",
        "sasl.password": PW, "ssl.ca.location": "/etc/ca.pem"}


def test_refused_credentials_name_sasl_password():
    err = KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: "
                     "Authentication failed during authentication due to invalid credentials with SASL mechanism "
                     "SCRAM-SHA-512 (after 325ms in state AUTH_REQ)")
    problem = diagnose(err, CONF)
    assert problem is not None and problem.definite
    assert problem.message.startswith("Kafka at 127.0.0.1:9093 refused the SASL credentials of user 'bridge'")
    assert "sasl.password" in problem.message and "[kafka]" in problem.message


def test_untrusted_certificate_names_ssl_ca_location():
    err = KafkaError(KafkaError._SSL, "sasl_ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:"
                     "SSL routines::certificate verify failed: broker certificate could not be verified, verify that "
                     "ssl.ca.location is correctly configured (after 10ms in state SSL_HANDSHAKE)")
    problem = diagnose(err, CONF)
    assert problem is not None and problem.definite
    assert "ssl.ca.location (now /etc/ca.pem)" in problem.message and "certificate verify failed" in problem.message


def test_secrets_in_a_client_error_are_masked_and_other_errors_are_not_security_problems():
    watcher = ProblemWatcher(CONF)
    watcher(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert watcher.problem is None
    watcher(KafkaError(KafkaError._AUTHENTICATION, f"b:9093/bootstrap: SASL handshake failed: odd {PW}"))
    assert watcher.problem is not None and PW not in watcher.problem.message and "sasl.*" in watcher.problem.message
