"""The password at rest: Fernet under a key ring, never returned as ciphertext."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from smtpsettings import keyring


def test_round_trip_and_ciphertext_differs_from_plaintext():
    token = keyring.encrypt("hunter2-secret")
    assert "hunter2" not in token
    assert keyring.decrypt(token) == "hunter2-secret"


def test_rotated_secret_key_still_decrypts_through_fallbacks(settings):
    token = keyring.encrypt("s3cret")
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-brand-new-secret-key-" + "x" * 30
    assert keyring.decrypt(token) == "s3cret"
    rotated = keyring.reencrypt(token)
    settings.SECRET_KEY_FALLBACKS = []
    assert keyring.decrypt(rotated) == "s3cret"
    with pytest.raises(keyring.UndecryptablePassword):
        keyring.decrypt(token)


def test_dedicated_keys_encrypt_with_the_first_and_decrypt_with_any(settings):
    old, new = keyring.generate_key(), keyring.generate_key()
    settings.SMTP_ENCRYPTION_KEYS = [old]
    token = keyring.encrypt("pw")
    settings.SMTP_ENCRYPTION_KEYS = [new, old]
    assert keyring.decrypt(token) == "pw"
    rotated = keyring.reencrypt(token)
    settings.SMTP_ENCRYPTION_KEYS = [new]
    assert keyring.decrypt(rotated) == "pw"


def test_password_saved_before_dedicated_keys_stays_readable(settings):
    token = keyring.encrypt("pw")
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    assert keyring.decrypt(token) == "pw"


def test_unknown_key_raises_a_clear_error_never_the_ciphertext(settings):
    token = keyring.encrypt("pw")
    settings.SECRET_KEY = "another-key-entirely-" + "y" * 30
    with pytest.raises(keyring.UndecryptablePassword, match="Enter the password again"):
        keyring.decrypt(token)
    with pytest.raises(keyring.UndecryptablePassword):
        keyring.decrypt("not a token at all")


def test_a_malformed_configured_key_is_a_clear_configuration_error(settings):
    settings.SMTP_ENCRYPTION_KEYS = ["too-short"]
    with pytest.raises(ImproperlyConfigured, match="Key 1 of SMTP_ENCRYPTION_KEYS"):
        keyring.encrypt("pw")


def test_bytes_under_the_key_ring_round_trip_rotate_and_fail_clearly(settings):
    old, new = keyring.generate_key(), keyring.generate_key()
    settings.SMTP_ENCRYPTION_KEYS = [old]
    message = b"Subject: Join\r\n\r\nhttps://console.example.com/invite/abc\r\n\x00\xff"
    token = keyring.encrypt_bytes(message)
    assert b"invite" not in token and token.isascii()
    assert keyring.decrypt_bytes(token) == message
    settings.SMTP_ENCRYPTION_KEYS = [new, old]
    rotated = keyring.reencrypt_bytes(token)
    settings.SMTP_ENCRYPTION_KEYS = [new]
    assert keyring.decrypt_bytes(rotated) == message
    with pytest.raises(keyring.Undecryptable, match="cannot be decrypted with the current keys"):
        keyring.decrypt_bytes(token)
    with pytest.raises(keyring.Undecryptable):
        keyring.reencrypt_bytes(token)
    with pytest.raises(keyring.Undecryptable):  # the password's error is one of these too
        keyring.decrypt("not a token at all")


def test_the_keys_are_derived_once_per_key_ring_not_per_message(settings, monkeypatch):
    """The outbox seals every message it stores: deriving the keys each time cost more than
    encrypting. Changing the settings still gives the new ring."""
    derived = []
    real = keyring.derive_key
    monkeypatch.setattr(keyring, "derive_key", lambda s: derived.append(s) or real(s))
    settings.SMTP_ENCRYPTION_KEYS, settings.SECRET_KEY_FALLBACKS = [], []
    settings.SECRET_KEY = "derived-once-" + "z" * 40
    tokens = [keyring.encrypt_bytes(b"message %d" % i) for i in range(5)]
    assert [keyring.decrypt_bytes(t) for t in tokens] == [b"message %d" % i for i in range(5)]
    assert derived == [settings.SECRET_KEY]
    settings.SECRET_KEY = "derived-once-rotated-" + "z" * 40
    with pytest.raises(keyring.Undecryptable):
        keyring.decrypt_bytes(tokens[0])
    assert derived[-1] == settings.SECRET_KEY
