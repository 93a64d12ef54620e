mkdir -p empty nested/only-empty-child/grandchild nested/with-mode
chmod 0750 nested/with-mode
