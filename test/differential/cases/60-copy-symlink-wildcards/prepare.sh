mkdir sub dangling-dir && echo a > sub/a && ln -s a sub/l1 && ln -s ../sub/a sub/l3 && ln -s sub/a l2
ln -s /nonexistent/path dangling-dir/broken && ln -s ../nope dangling-dir/broken-rel && echo kept > dangling-dir/kept
