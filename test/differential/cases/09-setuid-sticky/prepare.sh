mkdir -p bits/stickydir
echo x > bits/suid && chmod 4755 bits/suid
echo y > bits/sgid && chmod 2755 bits/sgid
echo z > bits/exec && chmod 0711 bits/exec
chmod 1777 bits/stickydir
