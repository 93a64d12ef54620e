mkdir -p attrs
echo x > attrs/with-user-xattr
setfattr -n user.kiln.test -v hello attrs/with-user-xattr
echo y > attrs/plain
