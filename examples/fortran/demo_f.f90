! demo_f.f90 - a small Fortran library with a C interface (bind(c)), used by
! the dllpool examples. Call it from ctypes like a C library:
!   int    f_add(int a, int b)                 (arguments passed by value)
!   double f_sum(const double *values, int n)  (n passed by value)
!   int    f_pointer_size(void)                (4 or 8)
module demo_f
  use, intrinsic :: iso_c_binding, only: c_int, c_double, c_ptr, c_null_ptr, c_sizeof
  implicit none
  private
  public :: f_add, f_sum, f_pointer_size

contains

  function f_add(a, b) result(r) bind(c, name="f_add")
    integer(c_int), value, intent(in) :: a, b
    integer(c_int) :: r
    r = a + b
  end function f_add

  function f_sum(values, n) result(r) bind(c, name="f_sum")
    integer(c_int), value, intent(in) :: n
    real(c_double), intent(in) :: values(*)
    real(c_double) :: r
    if (n <= 0) then
      r = 0.0_c_double
    else
      r = sum(values(1:n))
    end if
  end function f_sum

  function f_pointer_size() result(r) bind(c, name="f_pointer_size")
    integer(c_int) :: r
    type(c_ptr) :: p
    p = c_null_ptr
    r = int(c_sizeof(p), c_int)
  end function f_pointer_size

end module demo_f
