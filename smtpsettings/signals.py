from django.dispatch import Signal

# Sent after the SMTP settings were saved with changes. Arguments: settings (the record),
# changes (the history entries: field, label, old, new; never a password value), actor_name
# and source (as the history records them).
settings_saved = Signal()
