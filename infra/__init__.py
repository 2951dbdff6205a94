"""Infrastructure shared by the components: settings, the local stack, topics, migrations."""
